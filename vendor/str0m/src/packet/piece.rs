//! Parloir patch 26: packets that share their frame.

/// One packet of a frame, as a piece of it: `prefix` (a few bytes of the packetizer's own: a
/// codec's payload descriptor) then `len` bytes of the frame from `start`. A frame forwarded
/// to many connections is held once, by all their send queues and resend windows, instead of
/// being copied into each packet of each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    prefix: [u8; Piece::PREFIX_MAX],
    prefix_len: u8,
    start: u32,
    len: u32,
}

impl Piece {
    /// The longest prefix: VP8's payload descriptor is at most 6 bytes.
    pub(crate) const PREFIX_MAX: usize = 8;

    /// # Panics
    ///
    /// If `prefix` is longer than [`Piece::PREFIX_MAX`] (a packetizer's bug).
    pub(crate) fn new(prefix: &[u8], start: usize, len: usize) -> Self {
        let mut bytes = [0; Self::PREFIX_MAX];
        bytes[..prefix.len()].copy_from_slice(prefix);
        Piece {
            prefix: bytes,
            prefix_len: prefix.len() as u8,
            start: start as u32,
            len: len as u32,
        }
    }

    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix[..usize::from(self.prefix_len)]
    }

    /// The packet's payload length: the prefix and the frame's bytes.
    pub(crate) fn payload_len(&self) -> usize {
        usize::from(self.prefix_len) + self.len as usize
    }

    /// The frame's bytes of this packet.
    pub(crate) fn body<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize;
        &frame[start..start + self.len as usize]
    }

    /// Writes the payload (prefix, then the frame's bytes) into `out[..payload_len()]`.
    pub(crate) fn write_to(&self, frame: &[u8], out: &mut [u8]) {
        let prefix = self.prefix();
        out[..prefix.len()].copy_from_slice(prefix);
        let body = self.body(frame);
        out[prefix.len()..prefix.len() + body.len()].copy_from_slice(body);
    }

    /// The payload as one buffer (tests, and what `packetize` returns).
    pub(crate) fn to_vec(&self, frame: &[u8]) -> Vec<u8> {
        let mut out = vec![0; self.payload_len()];
        self.write_to(frame, &mut out);
        out
    }
}

/// Parloir patch 29: one packet of a frame from a packetizer that makes pieces where it can: a
/// piece of the frame, or a copy (a packet that is not a range of the frame, such as an H.264
/// STAP-A of the stored SPS and PPS).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    Piece(Piece),
    Copy(Vec<u8>),
}

impl Chunk {
    /// The piece, if the packet is one (tests of the packetizers' pieces).
    #[cfg(test)]
    pub(crate) fn piece(self) -> Option<Piece> {
        match self {
            Chunk::Piece(piece) => Some(piece),
            Chunk::Copy(_) => None,
        }
    }

    /// The packet's payload as one buffer.
    pub(crate) fn into_vec(self, frame: &[u8]) -> Vec<u8> {
        match self {
            Chunk::Piece(piece) => piece.to_vec(frame),
            Chunk::Copy(bytes) => bytes,
        }
    }
}
