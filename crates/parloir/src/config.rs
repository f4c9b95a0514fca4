//! The server configuration: a TOML file (`parloir serve --config FILE`) or the development
//! defaults (`--dev`). deploy/parloir.toml documents every key.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub rtc: RtcConfig,
    /// API key → secret. Tokens must be signed by one of these.
    pub keys: HashMap<String, String>,
    /// Development conveniences: `/api/dev-token` mints tokens for the meeting page.
    #[serde(default)]
    pub development: bool,
    #[serde(default)]
    pub webhook: WebhookConfig,
    #[serde(default)]
    pub speech: SpeechConfig,
}

/// The speech plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeechConfig {
    /// Transcribe published microphones: live subtitles to the room, transcripts on disk.
    pub enabled: bool,
    /// "all": every room, unless its metadata (a JSON object) has `"parloir.subtitles": false`;
    /// "opt-in": only rooms whose metadata has `"parloir.subtitles": true` (set by the back
    /// end at CreateRoom, or by a room administrator with UpdateRoomMetadata or from the page).
    pub rooms: String,
    /// models/: manifest.toml and the .venv the setup installs the model packages into.
    pub models_dir: PathBuf,
    /// The recogniser: "whisper" (Whisper-base, many languages; Moonshine stands in for English
    /// when Whisper's files are unusable) or "moonshine" (Moonshine base, English only).
    pub asr: String,
    /// Languages spoken in meetings ("en", "fr", …): one fixes it, several are detected among
    /// per utterance, none means any language Whisper knows.
    pub languages: Vec<String>,
    /// Inference threads (0: one per speech core of the core plan when pinned there, else 2).
    pub threads: usize,
    /// New audio between two interim decodes of an utterance, in milliseconds.
    pub interval_ms: u32,
    /// Where each meeting's transcript is appended, one JSON line per final segment
    /// (`<room sid>.jsonl`), and its summary written when the room closes.
    pub transcripts_dir: PathBuf,
    /// An OpenAI-compatible chat completions endpoint (`http://host:port/v1/chat/completions`,
    /// e.g. an on-premises LLM server) that writes meeting summaries; empty: the extractive
    /// summary only. When it fails or times out the extractive summary stands in.
    pub summary_llm_url: String,
    pub summary_llm_model: String,
    pub summary_llm_api_key: String,
    pub summary_llm_timeout_s: u64,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            rooms: "all".to_string(),
            models_dir: PathBuf::from("models"),
            asr: "whisper".to_string(),
            languages: Vec::new(),
            threads: 0,
            interval_ms: 1000,
            transcripts_dir: PathBuf::from("transcripts"),
            summary_llm_url: String::new(),
            summary_llm_model: String::new(),
            summary_llm_api_key: String::new(),
            summary_llm_timeout_s: 60,
        }
    }
}

/// Where LiveKit-style webhooks go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// URLs that receive every event (http://; https is not supported yet).
    pub urls: Vec<String>,
    /// The API key whose secret signs the events; the first key (by name) when empty.
    pub api_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP and WebSocket listener (signal, Twirp, metrics, the meeting page).
    pub http_addr: SocketAddr,
    /// Where recordings and transcripts go.
    pub data_dir: PathBuf,
    /// The meeting page: index.html, app.js and node_modules/livekit-client.
    pub web_dir: PathBuf,
    /// The hardware profile (hardware/*.toml): "auto" detects it.
    pub hardware_profile: String,
    /// Pin the media worker and the control threads to the cores of the profile's core plan.
    pub pin_cores: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7880),
            data_dir: PathBuf::from("data"),
            web_dir: PathBuf::from("web"),
            hardware_profile: "auto".into(),
            pin_cores: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtcConfig {
    /// The single UDP port every peer connection uses (ICE-lite).
    pub udp_port: u16,
    /// ICE-TCP (RFC 6544, passive) for networks that block UDP; 0 turns it off.
    pub tcp_port: u16,
    /// The address the UDP socket binds.
    pub bind_ip: IpAddr,
    /// The addresses clients reach the server on, advertised as ICE host candidates. Empty:
    /// the bind address (which must then not be unspecified).
    pub advertise_ips: Vec<IpAddr>,
    /// The UDP I/O backend: "auto", "io_uring", "mmsg" or "basic".
    pub io: String,
    /// Group equal-size datagrams for one client into one GSO send.
    pub gso: bool,
    /// Let the kernel coalesce received trains (UDP_GRO). Browsers do not send trains, so it
    /// only costs larger receive buffers; off by default.
    pub gro: bool,
    /// Media workers: 0 runs one per media core of the hardware profile's core plan. Worker
    /// `i` uses UDP port `udp_port + i` (and ICE-TCP `tcp_port + i`).
    pub media_workers: usize,
    /// A room's participants go to its home worker until it holds this many of them; later
    /// ones go to the least loaded worker, and the room spans workers (each relays its
    /// participants' media to the others that subscribe). 0: a room never leaves its home
    /// worker.
    pub room_span_after: u32,
    /// Audio is forwarded for the room's N loudest participants plus anyone speaking; 0
    /// forwards everyone's audio.
    pub loudest_audio: usize,
    /// Send-side bandwidth estimation per subscriber (TWCC), starting from this many kbit/s
    /// (default 1000): each subscriber's video is fitted to its link by priority. 0 turns it
    /// off, and every subscriber gets what its tiles ask for whatever its link: about 6 % less
    /// server CPU per forwarded packet in a loopback meeting of 18 (perf/README.md, "Early
    /// arrivals").
    pub bwe_initial_kbps: u32,
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            udp_port: 7882,
            tcp_port: 7881,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertise_ips: Vec::new(),
            io: "auto".into(),
            gso: true,
            gro: false,
            media_workers: 0,
            room_span_after: 25,
            loudest_audio: 3,
            bwe_initial_kbps: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid configuration")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// LiveKit's development defaults: key `devkey`, secret `secret`, loopback only, one media
    /// worker (one UDP port, whatever the machine).
    pub fn dev() -> Self {
        Self {
            server: ServerConfig::default(),
            rtc: RtcConfig {
                media_workers: 1,
                ..RtcConfig::default()
            },
            keys: HashMap::from([("devkey".to_string(), "secret".to_string())]),
            development: true,
            webhook: WebhookConfig::default(),
            speech: SpeechConfig::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keys.is_empty() {
            return Err(ConfigError::Invalid(
                "[keys] needs at least one API key".into(),
            ));
        }
        if let Some((k, _)) = self.keys.iter().find(|(_, s)| s.len() < 6) {
            return Err(ConfigError::Invalid(format!(
                "the secret of key {k:?} is too short"
            )));
        }
        if let Some(url) = self.webhook.urls.iter().find(|u| !u.starts_with("http://")) {
            return Err(ConfigError::Invalid(format!(
                "webhook URL {url:?}: only http:// URLs are supported (terminate TLS in front of the receiver)"
            )));
        }
        if !self.webhook.api_key.is_empty() && !self.keys.contains_key(&self.webhook.api_key) {
            return Err(ConfigError::Invalid(format!(
                "webhook.api_key {:?} is not one of [keys]",
                self.webhook.api_key
            )));
        }
        if self.speech.rooms != "all" && self.speech.rooms != "opt-in" {
            return Err(ConfigError::Invalid(format!(
                "speech.rooms {:?}: \"all\" or \"opt-in\"",
                self.speech.rooms
            )));
        }
        if self.speech.asr != "whisper" && self.speech.asr != "moonshine" {
            return Err(ConfigError::Invalid(format!(
                "speech.asr {:?}: \"whisper\" or \"moonshine\"",
                self.speech.asr
            )));
        }
        if !self.speech.summary_llm_url.is_empty()
            && !self.speech.summary_llm_url.starts_with("http://")
        {
            return Err(ConfigError::Invalid(format!(
                "speech.summary_llm_url {:?}: only http:// endpoints are supported",
                self.speech.summary_llm_url
            )));
        }
        if let Err(e) = self.rtc.io.parse::<parloir_net::IoMode>() {
            return Err(ConfigError::Invalid(format!("rtc.io: {e}")));
        }
        if self.candidates().is_empty() {
            return Err(ConfigError::Invalid(
                "rtc.bind_ip is unspecified: list the addresses clients use in rtc.advertise_ips"
                    .into(),
            ));
        }
        Ok(())
    }

    /// How the UDP backend is chosen (validated by `validate`).
    pub fn io_mode(&self) -> parloir_net::IoMode {
        self.rtc.io.parse().unwrap_or_default()
    }

    /// The UDP socket address to bind.
    pub fn udp_bind(&self) -> SocketAddr {
        SocketAddr::new(self.rtc.bind_ip, self.rtc.udp_port)
    }

    /// The TCP address to listen on for ICE-TCP, if on.
    pub fn tcp_bind(&self) -> Option<SocketAddr> {
        (self.rtc.tcp_port != 0).then(|| SocketAddr::new(self.rtc.bind_ip, self.rtc.tcp_port))
    }

    /// The ICE-TCP passive candidates to advertise.
    pub fn tcp_candidates(&self) -> Vec<SocketAddr> {
        if self.rtc.tcp_port == 0 {
            return Vec::new();
        }
        self.candidates()
            .into_iter()
            .map(|a| SocketAddr::new(a.ip(), self.rtc.tcp_port))
            .collect()
    }

    /// The ICE host candidates to advertise.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        if self.rtc.advertise_ips.is_empty() {
            if self.rtc.bind_ip.is_unspecified() {
                return Vec::new();
            }
            return vec![self.udp_bind()];
        }
        self.rtc
            .advertise_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.rtc.udp_port))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/parloir.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.rtc.udp_port, 7882);
        assert!(!config.candidates().is_empty());
    }

    #[test]
    fn unknown_keys_and_missing_candidates_are_refused() {
        assert!(toml::from_str::<Config>("[keys]\na = \"secret1\"\n[server]\nnope = 1\n").is_err());
        let c: Config =
            toml::from_str("[keys]\na = \"secret1\"\n[rtc]\nbind_ip = \"0.0.0.0\"\n").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("[keys]\na = \"s\"\n").unwrap();
        assert!(c.validate().is_err(), "short secret");
        let c: Config = toml::from_str(
            "[keys]\na = \"secret1\"\n[webhook]\nurls = [\"https://example.invalid/hook\"]\n",
        )
        .unwrap();
        assert!(
            c.validate().is_err(),
            "https webhooks are refused with a reason, not ignored"
        );
        let c: Config =
            toml::from_str("[keys]\na = \"secret1\"\n[webhook]\napi_key = \"b\"\n").unwrap();
        assert!(c.validate().is_err(), "the webhook key must exist");
        let c: Config = toml::from_str("[keys]\na = \"secret1\"\n[rtc]\nio = \"epoll\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("rtc.io") && e.contains("epoll"), "{e}");
        let c: Config =
            toml::from_str("[keys]\na = \"secret1\"\n[rtc]\nio = \"io_uring\"\n").unwrap();
        assert_eq!(
            c.io_mode(),
            parloir_net::IoMode::Fixed(parloir_net::Backend::IoUring)
        );
    }
}
