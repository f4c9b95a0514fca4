//! Opus to 16 kHz mono: libopus decodes at 48 kHz, a 3:1 FIR decimator takes it to 16 kHz.

use crate::SpeechError;
use crate::audio::Decimator3;

/// The longest Opus frame: 120 ms at 48 kHz.
const MAX_FRAME: usize = 5760;

/// One track's decoder.
pub struct OpusDecoder {
    decoder: opus::Decoder,
    pcm48: Vec<f32>,
    decimator: Decimator3,
}

impl OpusDecoder {
    pub fn new() -> Result<Self, SpeechError> {
        Ok(Self {
            decoder: opus::Decoder::new(48_000, opus::Channels::Mono)
                .map_err(|e| SpeechError::Audio(format!("Opus decoder: {e}")))?,
            pcm48: vec![0.0; MAX_FRAME],
            decimator: Decimator3::new(),
        })
    }

    /// Decodes one Opus packet and appends its audio, at 16 kHz, to `out`. A packet that does
    /// not decode is an error and leaves the decoder usable.
    pub fn decode(&mut self, packet: &[u8], out: &mut Vec<f32>) -> Result<(), SpeechError> {
        let n = self
            .decoder
            .decode_float(packet, &mut self.pcm48, false)
            .map_err(|e| SpeechError::Audio(format!("Opus packet: {e}")))?;
        self.decimator.push(&self.pcm48[..n], out);
        Ok(())
    }
}
