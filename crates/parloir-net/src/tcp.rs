//! ICE-TCP framing (RFC 4571): on a TCP connection each packet is preceded by its length as a
//! 16-bit big-endian number.

/// The largest packet a frame can carry.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Collects a TCP byte stream and cuts it into packets.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete packet, if the stream holds one.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        let rest = &self.buf[self.start..];
        if rest.len() < 2 {
            self.compact();
            return None;
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        if rest.len() < 2 + len {
            self.compact();
            return None;
        }
        let from = self.start + 2;
        self.start = from + len;
        Some(&self.buf[from..from + len])
    }

    /// Bytes held waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Appends `packet`, framed, to `out`. Packets over [`MAX_FRAME`] bytes cannot be framed.
pub fn write_frame(packet: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(len) = u16::try_from(packet.len()) else {
        return false;
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut stream = Vec::new();
        let packets: Vec<Vec<u8>> = (0..50u16)
            .map(|n| vec![n as u8; (n as usize * 37) % 1500])
            .collect();
        for p in &packets {
            assert!(write_frame(p, &mut stream));
        }
        for chunk in [1, 2, 3, 7, 1000, stream.len()] {
            let mut reader = FrameReader::default();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                reader.push(piece);
                while let Some(f) = reader.next_frame() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, packets, "chunks of {chunk}");
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn oversized_packets_are_refused() {
        let mut out = Vec::new();
        assert!(!write_frame(&vec![0; MAX_FRAME + 1], &mut out));
        assert!(out.is_empty());
        assert!(
            write_frame(&[], &mut out),
            "an empty packet is a valid frame"
        );
        let mut reader = FrameReader::default();
        reader.push(&out);
        assert_eq!(reader.next_frame(), Some(&[][..]));
    }
}
