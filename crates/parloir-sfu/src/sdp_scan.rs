//! The few facts the SFU reads from SDP text that str0m does not expose: which msid track id
//! each m-line carries (LiveKit matches a published track to its AddTrack request by it) and the
//! ICE username fragment.

use std::collections::HashMap;

/// mid → msid track id, for every m-section that has both.
pub(crate) fn msid_tracks(sdp: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut mid: Option<&str> = None;
    let mut track: Option<&str> = None;
    let mut flush = |mid: &mut Option<&str>, track: &mut Option<&str>| {
        if let (Some(m), Some(t)) = (mid.take(), track.take()) {
            out.insert(m.to_string(), t.to_string());
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            flush(&mut mid, &mut track);
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.trim());
        } else if let Some(msid) = line.strip_prefix("a=msid:") {
            track = msid.split_whitespace().nth(1);
        }
    }
    flush(&mut mid, &mut track);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_msid_per_mid() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:stream-a track-a\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:- track-v\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        let m = msid_tracks(sdp);
        assert_eq!(m.get("0").map(String::as_str), Some("track-a"));
        assert_eq!(m.get("1").map(String::as_str), Some("track-v"));
        assert!(!m.contains_key("2"));
    }
}

/// One m-section of an SDP: its kind (`audio`, `video`, `application`), mid and direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    pub kind: String,
    pub mid: Option<String>,
    pub direction: Option<String>,
}

pub(crate) fn sections(sdp: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            out.push(Section {
                kind: m.split_whitespace().next().unwrap_or_default().to_string(),
                mid: None,
                direction: None,
            });
        } else if let Some(section) = out.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                section.mid = Some(mid.trim().to_string());
            } else if let Some(dir) = line
                .strip_prefix("a=")
                .filter(|a| matches!(*a, "sendrecv" | "sendonly" | "recvonly" | "inactive"))
            {
                section.direction = Some(dir.to_string());
            }
        }
    }
    out
}

/// How to change one m-section of a client's offer before str0m reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rewrite {
    Keep,
    /// The server will not send on it: str0m then answers `inactive`.
    Inactive,
    /// The server sends this track on it: str0m copies an offered msid into its answer when it
    /// creates the m-line, which is how the client learns the `PA_x|TR_y` stream.
    Msid {
        stream: String,
        track: String,
    },
}

/// Rewrites the m-sections of `sdp` chosen by `plan` (keyed by mid).
pub(crate) fn rewrite(sdp: &str, plan: &HashMap<String, Rewrite>) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = sdp.lines().map(str::trim_end).collect();
    // Section boundaries and the rewrite of each.
    let mut out = String::with_capacity(sdp.len() + 128);
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].starts_with("m=") {
            out.push_str(lines[i]);
            out.push_str(eol);
            i += 1;
            continue;
        }
        let end = lines[i + 1..]
            .iter()
            .position(|l| l.starts_with("m="))
            .map_or(lines.len(), |p| i + 1 + p);
        let section = &lines[i..end];
        let mid = section
            .iter()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(str::trim);
        let rewrite = mid.and_then(|m| plan.get(m)).unwrap_or(&Rewrite::Keep);
        for line in section {
            match rewrite {
                Rewrite::Keep => {}
                Rewrite::Inactive => {
                    if matches!(*line, "a=sendrecv" | "a=sendonly" | "a=recvonly") {
                        out.push_str("a=inactive");
                        out.push_str(eol);
                        continue;
                    }
                }
                Rewrite::Msid { stream, track } => {
                    if line.starts_with("a=msid:")
                        || (line.starts_with("a=ssrc:") && line.contains(" msid:"))
                    {
                        continue;
                    }
                    if line.starts_with("a=mid:") {
                        out.push_str(line);
                        out.push_str(eol);
                        out.push_str(&format!("a=msid:{stream} {track}"));
                        out.push_str(eol);
                        continue;
                    }
                }
            }
            out.push_str(line);
            out.push_str(eol);
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod rewrite_tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=msid:- abc\r\na=recvonly\r\na=ssrc:1 msid:- abc\r\na=ssrc:1 cname:x\r\n";

    #[test]
    fn reads_sections() {
        let s = sections(OFFER);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].kind, "audio");
        assert_eq!(s[1].mid.as_deref(), Some("1"));
        assert_eq!(s[1].direction.as_deref(), Some("recvonly"));
        assert_eq!(s[0].direction, None);
    }

    #[test]
    fn rewrites_direction_and_msid() {
        let plan = HashMap::from([
            ("1".to_string(), Rewrite::Inactive),
            (
                "2".to_string(),
                Rewrite::Msid {
                    stream: "PA_x|TR_y".into(),
                    track: "TR_y".into(),
                },
            ),
        ]);
        let out = rewrite(OFFER, &plan);
        let s = sections(&out);
        assert_eq!(s[1].direction.as_deref(), Some("inactive"));
        assert_eq!(s[2].direction.as_deref(), Some("recvonly"));
        assert_eq!(msid_tracks(&out).get("2").map(String::as_str), Some("TR_y"));
        assert!(!out.contains("msid:- abc"));
        assert!(out.contains("a=ssrc:1 cname:x\r\n"));
        assert!(out.starts_with("v=0\r\n") && out.ends_with("\r\n"));
        assert_eq!(
            rewrite(OFFER, &HashMap::new()),
            OFFER,
            "an empty plan changes nothing"
        );
    }
}

/// What Parloir's answer to a publisher says about one of its m-lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AnswerCodec {
    /// The codec whose payload types go first, named as in `a=rtpmap` (`H264`, `VP9`, `red`).
    /// The offerer sends with the first codec of the answer, and livekit-client leaves the
    /// choice to the server: LiveKit's server answers with the codec of the track's AddTrack
    /// request first (for a microphone, RED unless `disable_red`), and so does Parloir.
    pub first: String,
    /// Opus parameters asked of the sender, as LiveKit's answer asks them: `usedtx=1` unless
    /// the track was published with `disable_dtx` (livekit-client 2 leaves DTX to this), and
    /// `stereo=1;maxaveragebitrate=510000` for a stereo track.
    pub dtx: bool,
    pub stereo: bool,
}

/// Edits the chosen m-sections of an answer (keyed by mid): codec order and Opus parameters.
///
/// Within a BUNDLE group a payload type must carry the same parameters on every m-line
/// (libwebrtc refuses the description otherwise: "bundled payload type collision"), so the Opus
/// parameters go on every audio m-line of the answer: DTX if every published microphone asks
/// for it, stereo if any does.
pub(crate) fn prefer_codecs(answer: &str, codecs: &HashMap<String, AnswerCodec>) -> String {
    if codecs.is_empty() {
        return answer.to_string();
    }
    let eol = if answer.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let lines: Vec<&str> = answer.lines().map(str::trim_end).collect();
    // Each m-section: its line range (the `m=` line first) and the edit chosen for it.
    let mut sections: Vec<(usize, usize, Option<&AnswerCodec>)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("m=") {
            if let Some(last) = sections.last_mut() {
                last.1 = i;
            }
            sections.push((i, lines.len(), None));
        }
    }
    for section in &mut sections {
        let mid = lines[section.0..section.1]
            .iter()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(str::trim);
        section.2 = mid.and_then(|mid| codecs.get(mid));
    }
    let is_audio = |start: usize| lines[start].starts_with("m=audio ");
    let mics: Vec<&AnswerCodec> = sections
        .iter()
        .filter(|s| is_audio(s.0))
        .filter_map(|s| s.2)
        .collect();
    let mut params: Vec<(&str, &str)> = Vec::new();
    if !mics.is_empty() && mics.iter().all(|m| m.dtx) {
        params.push(("usedtx", "1"));
    }
    if mics.iter().any(|m| m.stereo) {
        params.extend([("stereo", "1"), ("maxaveragebitrate", "510000")]);
    }
    // `name=value;…`, leaving out what `present` already sets.
    let join = |present: &str| -> String {
        params
            .iter()
            .filter(|(name, _)| {
                !present
                    .split(';')
                    .any(|q| q.trim().split('=').next() == Some(*name))
            })
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(";")
    };
    let mut out = String::with_capacity(answer.len() + 64);
    let mut line_out = |line: &str| {
        out.push_str(line);
        out.push_str(eol);
    };
    let first = sections.first().map_or(lines.len(), |s| s.0);
    for line in &lines[..first] {
        line_out(line);
    }
    for &(start, end, edit) in &sections {
        let section = &lines[start + 1..end];
        let rtpmaps: Vec<(&str, &str)> = section
            .iter()
            .filter_map(|l| l.strip_prefix("a=rtpmap:"))
            .filter_map(|r| r.split_once(' '))
            .map(|(pt, name)| (pt, name.split('/').next().unwrap_or_default()))
            .collect();
        let pts_of = |codec: &str| -> Vec<&str> {
            rtpmaps
                .iter()
                .filter(|(_, name)| name.eq_ignore_ascii_case(codec))
                .map(|&(pt, _)| pt)
                .collect()
        };
        let fields: Vec<&str> = lines[start][2..].split_whitespace().collect();
        match edit {
            Some(edit) if fields.len() > 3 => {
                let wanted = pts_of(&edit.first);
                let mut pts: Vec<&str> = fields[3..].to_vec();
                // A stable sort keeps the answerer's order within each group.
                pts.sort_by_key(|pt| !wanted.contains(pt));
                line_out(&format!("m={} {}", fields[..3].join(" "), pts.join(" ")));
            }
            _ => line_out(lines[start]),
        }
        let opus = if is_audio(start) && !params.is_empty() {
            pts_of("opus")
        } else {
            Vec::new()
        };
        let opus_fmtp = section.iter().any(|l| fmtp_of(l, &opus).is_some());
        for &l in section {
            if let Some((pt, present)) = fmtp_of(l, &opus) {
                let more = join(present);
                if more.is_empty() {
                    line_out(l);
                } else {
                    line_out(&format!("a=fmtp:{pt} {present};{more}"));
                }
                continue;
            }
            line_out(l);
            // An Opus payload type without parameters gets a line of them.
            if let Some((pt, _)) = l.strip_prefix("a=rtpmap:").and_then(|r| r.split_once(' '))
                && opus.contains(&pt)
                && !opus_fmtp
            {
                line_out(&format!("a=fmtp:{pt} {}", join("")));
            }
        }
    }
    out
}

/// The payload type and parameters of an `a=fmtp` line for one of `pts`.
fn fmtp_of<'a>(line: &'a str, pts: &[&str]) -> Option<(&'a str, &'a str)> {
    line.strip_prefix("a=fmtp:")?
        .split_once(' ')
        .filter(|(pt, _)| pts.contains(pt))
}

#[cfg(test)]
mod order_tests {
    use super::*;

    #[test]
    fn the_chosen_codec_goes_first() {
        let answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 98\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=rtpmap:102 H264/90000\r\na=rtpmap:103 rtx/90000\r\na=rtpmap:98 VP9/90000\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 102\r\na=mid:2\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n";
        let codecs = HashMap::from([(
            "1".to_string(),
            AnswerCodec {
                first: "h264".into(),
                ..Default::default()
            },
        )]);
        let out = prefer_codecs(answer, &codecs);
        assert!(
            out.contains("m=video 9 UDP/TLS/RTP/SAVPF 102 96 97 103 98\r\na=mid:1"),
            "{out}"
        );
        assert!(
            out.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 102\r\na=mid:2"),
            "other m-lines keep their order"
        );
        assert_eq!(out.len(), answer.len());
        assert_eq!(prefer_codecs(answer, &HashMap::new()), answer);
    }

    const AUDIO: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\n";

    fn edit(first: &str, dtx: bool, stereo: bool) -> AnswerCodec {
        AnswerCodec {
            first: first.into(),
            dtx,
            stereo,
        }
    }

    #[test]
    fn a_microphone_gets_red_first_and_dtx() {
        let codecs = HashMap::from([("0".to_string(), edit("red", true, false))]);
        let out = prefer_codecs(AUDIO, &codecs);
        assert!(
            out.contains("m=audio 9 UDP/TLS/RTP/SAVPF 63 111\r\na=mid:0"),
            "{out}"
        );
        assert!(
            out.contains("a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n"),
            "{out}"
        );
        assert!(
            out.contains("a=fmtp:63 111/111\r\n"),
            "RED's own line is left: {out}"
        );
        // The other audio m-line keeps its order and gets the same Opus parameters (one
        // payload type, one set of parameters in a BUNDLE group).
        assert!(
            out.ends_with("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 usedtx=1\r\n"),
            "{out}"
        );
    }

    #[test]
    fn disable_red_and_dtx_and_stereo_are_honoured() {
        let codecs = HashMap::from([
            ("0".to_string(), edit("opus", false, true)),
            ("1".to_string(), edit("red", true, true)),
        ]);
        let out = prefer_codecs(AUDIO, &codecs);
        assert!(
            out.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0"),
            "{out}"
        );
        assert!(
            out.contains(
                "a=fmtp:111 minptime=10;useinbandfec=1;stereo=1;maxaveragebitrate=510000\r\na=rtpmap:63"
            ),
            "{out}"
        );
        // No RED to put first, and no fmtp line: one is added after the rtpmap. DTX only when
        // every microphone asks for it, stereo when any does.
        assert!(
            out.ends_with("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 stereo=1;maxaveragebitrate=510000\r\n"),
            "{out}"
        );
        // What the answer already says is not said twice.
        let again = prefer_codecs(&out, &codecs);
        assert_eq!(again, out);
    }
}

/// The `o=` line's session id and version: equal in an offer and in the copy a client kept of it,
/// even when the client re-serialised the rest.
pub(crate) fn origin(sdp: &str) -> Option<(&str, &str)> {
    let line = sdp.lines().find(|l| l.starts_with("o="))?;
    let mut f = line[2..].split_whitespace();
    let _user = f.next()?;
    Some((f.next()?, f.next()?))
}

#[cfg(test)]
mod origin_tests {
    #[test]
    fn origin_is_id_and_version() {
        let a = "v=0\r\no=str0m-0.25.0 4281518769434356692 2 IN IP4 0.0.0.0\r\ns=-\r\n";
        let b = "v=0\no=- 4281518769434356692 2 IN IP4 0.0.0.0\ns=-\n";
        assert_eq!(super::origin(a), Some(("4281518769434356692", "2")));
        assert_eq!(super::origin(a), super::origin(b));
        assert_eq!(super::origin("v=0\n"), None);
    }
}
