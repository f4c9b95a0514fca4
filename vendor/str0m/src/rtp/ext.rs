use std::any::Any;
use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::fmt::Debug;
use std::hash::BuildHasherDefault;
use std::hash::Hasher;
use std::panic::UnwindSafe;
use std::str::from_utf8;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::util::InstantExt;
use crate::util::SystemTimeExt;
use crate::util::already_happened;
use crate::util::epoch_to_beginning;

use crate::rtp_::Frequency;

use super::mtime::MediaTime;
use super::{Mid, Rid};

thread_local! {
    /// Parloir patch 83: the last instant `abs_send_time_24` converted, and what it gave.
    static LAST_ABS_SEND_TIME: std::cell::Cell<Option<(Instant, u32)>> =
        const { std::cell::Cell::new(None) };
}

/// Parloir patch 83: the absolute send time extension's value for `t` (6.18 fixed point,
/// seconds modulo 64), as `MediaTime::from(t.to_unix_duration())` rebased to
/// `Frequency::FIXED_POINT_6_18` gave it in its low 24 bits: whole microseconds times 2^18
/// over 10^6, rounded down, which is the seconds times 2^18 plus the microseconds within the
/// second times 2^18 over 10^6 (the seconds' part is whole), so 64-bit arithmetic on the
/// microseconds within the second gives the same bits as the rebase's 128-bit product and
/// quotient. Every packet sent carries the extension, and a burst's packets share their
/// instant: the conversion (an `Instant` subtraction and a `Duration` addition) is done
/// once for them.
fn abs_send_time_24(t: Instant) -> u32 {
    LAST_ABS_SEND_TIME.with(|last| {
        if let Some((at, value)) = last.get()
            && at == t
        {
            return value;
        }
        let unix = t.to_unix_duration();
        let fraction = u64::from(unix.subsec_micros()) * (1 << 18) / 1_000_000;
        let value = (((unix.as_secs() & 63) << 18) | fraction) as u32;
        last.set(Some((t, value)));
        value
    })
}

/// RTP header extensions.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Extension {
    /// <http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time>
    AbsoluteSendTime,
    /// <http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time>
    AbsoluteCaptureTime,
    /// <urn:ietf:params:rtp-hdrext:ssrc-audio-level>
    AudioLevel,
    /// <urn:ietf:params:rtp-hdrext:toffset>
    ///
    /// Use when a RTP packet is delayed by a send queue to indicate an offset in the "transmitter".
    /// It effectively means we can set a timestamp offset exactly when the UDP packet leaves the
    /// server.
    TransmissionTimeOffset,
    /// <urn:3gpp:video-orientation>
    VideoOrientation,
    /// <http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01>
    TransportSequenceNumber,
    /// <http://www.webrtc.org/experiments/rtp-hdrext/playout-delay>
    PlayoutDelay,
    /// <http://www.webrtc.org/experiments/rtp-hdrext/video-content-type>
    VideoContentType,
    /// <http://www.webrtc.org/experiments/rtp-hdrext/video-timing>
    VideoTiming,
    /// <urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id>
    ///
    /// UTF8 encoded identifier for the RTP stream. Not the same as SSRC, this is is designed to
    /// avoid running out of SSRC for very large sessions.
    RtpStreamId,
    /// <urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id>
    ///
    /// UTF8 encoded identifier referencing another RTP stream's RtpStreamId. If we see
    /// this extension type, we know the stream is a repair stream.
    RepairedRtpStreamId,
    /// <urn:ietf:params:rtp-hdrext:sdes:mid>
    RtpMid,
    /// <http://tools.ietf.org/html/draft-ietf-avtext-framemarking-07>
    FrameMarking,
    /// <http://www.webrtc.org/experiments/rtp-hdrext/color-space>
    ColorSpace,

    /// Not recognized URI, but it could still be user parseable.
    #[doc(hidden)]
    UnknownUri(String, Arc<dyn ExtensionSerializer>),
}

// All header extensions must have a common "form", either using
// 1 byte for the (ID, len) or 2 bytes for the (ID, len).
// If one extension requires the two byte form
// (probably because of its size, but possibly because of ID),
// The form must be the two-byte variety for all of them.
#[repr(u16)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ExtensionsForm {
    // See RFC 8285 Section 4.2
    // ID Range: 1..=14
    // Length Range: 1..=16
    OneByte = 0xBEDE,
    // See RFC 8285 Section 4.3
    // ID Range: 1..=255
    // Length Range: 0..=255
    TwoByte = 0x1000,
}

pub const MAX_ID_ONE_BYTE_FORM: u8 = 14;
// With the two byte form, it could be 255, but supporting larger values makes the ExtensionMap larger.
// So we support only up to this ID for now.
pub const MAX_ID: u8 = 16;

impl ExtensionsForm {
    pub(crate) fn as_u16(self) -> u16 {
        self as u16
    }

    pub(crate) fn serialize(self) -> [u8; 2] {
        // App bits set to 0
        self.as_u16().to_be_bytes()
    }

    pub(crate) fn parse(bytes: [u8; 2]) -> Option<Self> {
        let serialized = u16::from_be_bytes(bytes);
        if serialized == ExtensionsForm::OneByte.as_u16() {
            Some(ExtensionsForm::OneByte)
        // Ignore the app bits
        } else if (serialized & 0xFFF0) == ExtensionsForm::TwoByte.as_u16() {
            Some(ExtensionsForm::TwoByte)
        } else {
            None
        }
    }
}

// TODO: think this through. Is it unwind safe?
impl UnwindSafe for Extension {}

/// Trait for parsing/writing user RTP header extensions.
pub trait ExtensionSerializer: Debug + Send + Sync + 'static {
    /// Write the extension to the buffer of bytes. Must return the number
    /// of bytes written. This can be 0 if the extension could not be serialized.
    fn write_to(&self, buf: &mut [u8], ev: &ExtensionValues) -> usize;

    /// Parse a value and put it in the [`ExtensionValues::user_values`] field.
    fn parse_value(&self, buf: &[u8], ev: &mut ExtensionValues) -> bool;

    /// Tell if this extension should be used for video media.
    fn is_video(&self) -> bool;

    /// Tell if this extension should be used for audio media.
    fn is_audio(&self) -> bool;

    /// When calling write_to, if the size of the written value may exceed 16 bytes,
    /// or may be 0 bytes, the two byte header extension form must be used.
    /// Otherwise, the one byte form may be used, which is usually the case.
    fn requires_two_byte_form(&self, _ev: &ExtensionValues) -> bool {
        false
    }
}

impl Extension {
    fn requires_two_byte_form(&self, ev: &ExtensionValues) -> bool {
        match self {
            Extension::UnknownUri(_, serializer) => serializer.requires_two_byte_form(ev),
            _ => false,
        }
    }
}

/// This is a placeholder value for when the Extension URI are parsed in an SDP OFFER/ANSWER.
/// The trait write_to() and parse_value() should never be called (that would be a bug).
#[derive(Debug)]
struct SdpUnknownUri;

impl ExtensionSerializer for SdpUnknownUri {
    // If an unreachable happens, it's a bug.
    fn write_to(&self, _buf: &mut [u8], _ev: &ExtensionValues) -> usize {
        unreachable!("Incorrect ExtensionSerializer::write_to")
    }
    fn parse_value(&self, _buf: &[u8], _ev: &mut ExtensionValues) -> bool {
        unreachable!("Incorrect ExtensionSerializer::parse_value")
    }
    fn is_video(&self) -> bool {
        unreachable!("Incorrect ExtensionSerializer::is_video")
    }
    fn is_audio(&self) -> bool {
        unreachable!("Incorrect ExtensionSerializer::is_audio")
    }
}

/// Mapping of extension URI to our enum
const EXT_URI: &[(Extension, &str)] = &[
    (
        Extension::AbsoluteSendTime,
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    ),
    (
        Extension::AbsoluteCaptureTime,
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time",
    ),
    (
        Extension::AudioLevel,
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    ),
    (
        Extension::TransmissionTimeOffset,
        "urn:ietf:params:rtp-hdrext:toffset",
    ),
    (
        Extension::VideoOrientation, //
        "urn:3gpp:video-orientation",
    ),
    (
        Extension::TransportSequenceNumber,
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    ),
    (
        Extension::PlayoutDelay,
        "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    ),
    (
        Extension::VideoContentType,
        "http://www.webrtc.org/experiments/rtp-hdrext/video-content-type",
    ),
    (
        Extension::VideoTiming,
        "http://www.webrtc.org/experiments/rtp-hdrext/video-timing",
    ),
    (
        Extension::RtpStreamId,
        "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    ),
    (
        Extension::RepairedRtpStreamId,
        "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    ),
    (
        Extension::RtpMid, //
        "urn:ietf:params:rtp-hdrext:sdes:mid",
    ),
    (
        Extension::FrameMarking,
        "http://tools.ietf.org/html/draft-ietf-avtext-framemarking-07",
    ),
    (
        Extension::ColorSpace,
        "http://www.webrtc.org/experiments/rtp-hdrext/color-space",
    ),
];

impl Extension {
    /// Parses an extension from a URI. This only happens for incoming SDP OFFER/ANSWER
    /// while the corresponding Extension with a potential ExtensionSerializer is
    /// in Rtc::session.
    pub(crate) fn from_sdp_uri(uri: &str) -> Self {
        for (t, spec) in EXT_URI.iter() {
            if *spec == uri {
                return t.clone();
            }
        }

        Extension::UnknownUri(uri.to_string(), Arc::new(SdpUnknownUri))
    }

    /// Extension for a uri not handled by str0m itself.
    pub fn with_serializer(uri: &str, s: impl ExtensionSerializer) -> Self {
        Extension::UnknownUri(uri.to_string(), Arc::new(s))
    }

    /// Represents the extension as an URI.
    pub fn as_uri(&self) -> &str {
        for (t, spec) in EXT_URI.iter() {
            if t == self {
                return spec;
            }
        }

        if let Extension::UnknownUri(uri, _) = self {
            return uri;
        }

        "unknown"
    }

    pub(crate) fn is_serialized(&self) -> bool {
        if let Self::UnknownUri(_, s) = self {
            // Check if this Arc contains the SdpUnknownUri.
            let is_sdp = (s as &(dyn Any + 'static))
                .downcast_ref::<SdpUnknownUri>()
                .is_some();

            // If it is the SdpUnknownUri, we are not serializing. If this happens,
            // it's probably a bug. The only way to construct SdpUnknownUri is via SDP,
            // but those values are only for Eq-comparison vs the values in Session.
            // The SdpUnknownUri should not even try to be serialized.
            if is_sdp {
                panic!("is_serialized on SdpUnkownUri, this is a bug");
            }
        }
        true
    }

    fn is_audio(&self) -> bool {
        use Extension::*;

        if let UnknownUri(_, serializer) = self {
            return serializer.is_audio();
        }

        matches!(
            self,
            RtpStreamId
                | RepairedRtpStreamId
                | RtpMid
                | AbsoluteSendTime
                | AbsoluteCaptureTime
                | AudioLevel
                | TransportSequenceNumber
                | TransmissionTimeOffset
                | PlayoutDelay
        )
    }

    fn is_video(&self) -> bool {
        use Extension::*;

        if let UnknownUri(_, serializer) = self {
            return serializer.is_video();
        }

        matches!(
            self,
            RtpStreamId
                | RepairedRtpStreamId
                | RtpMid
                | AbsoluteSendTime
                | AbsoluteCaptureTime
                | VideoOrientation
                | TransportSequenceNumber
                | TransmissionTimeOffset
                | PlayoutDelay
                | VideoContentType
                | VideoTiming
                | FrameMarking
                | ColorSpace
        )
    }
}

// As of 2022-09-28, for audio google chrome offers these.
// "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"
// "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
// "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
// "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid"
//
// For video these.
// "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
// "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
// "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid"
// "a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
// "a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type"
// "a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing"
// "a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space"
// "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
// "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
// "a=extmap:13 urn:3gpp:video-orientation"
// "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset"

/// Mapping between RTP extension id to what extension that is.
///
/// Parloir patch: one byte per id for the extensions str0m knows, so that the map is one
/// cache line. It was an array of 16 entries of 48 bytes (an extension may carry a URI and a
/// serializer), and each m-line holds one, read in full for every packet sent on it. The
/// extensions str0m does not know (a URI with a serializer of its own) are kept apart.
#[derive(Clone, PartialEq, Eq)]
pub struct ExtensionMap {
    /// What each id maps to (index 0 is extmap:1): [`NO_EXT`], [`UNKNOWN_EXT`] (then it is in
    /// `unknown`), or one plus the extension's index in [`KNOWN`].
    kinds: [u8; MAX_ID as usize],
    /// Parloir patch 73: the ids mapped to an extension (`kinds` not [`NO_EXT`]), bit
    /// `id - 1`. Writing a packet's extensions walks these bits, not all of `kinds` twice
    /// (about 350 instructions per packet, most of them on ids mapped to nothing).
    mapped: u16,
    /// The ids locked by a previous negotiation, bit `id - 1`.
    locked: u16,
    /// Parloir patch 91: the ids of the extensions str0m does not know, bit `id - 1`.
    unknown_ids: u16,
    /// Parloir patch 91: a known extension is mapped at more than one id (each is written).
    twice: bool,
    /// Parloir patch 91: the lowest id of each known extension but color space (index
    /// kind - 1), 0 for none: writing a packet's values finds the ids of those it has here,
    /// instead of asking every mapped id. Kept by `reindex` as the map changes.
    first_id: [u8; 13],
    /// The extensions str0m does not know, by index (id - 1), in index order.
    unknown: Vec<(u8, Extension)>,
}

/// An id mapped to nothing.
const NO_EXT: u8 = 0;
/// An id mapped to an extension str0m does not know.
const UNKNOWN_EXT: u8 = u8::MAX;

/// Parloir patch 73: the indexes (id - 1) of the bits set in an [`ExtensionMap`]'s `mapped`,
/// lowest first.
struct MappedIds(u16);

impl Iterator for MappedIds {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(i)
    }
}

/// The extensions str0m knows, in the order of their kinds in [`ExtensionMap`].
static KNOWN: [Extension; 14] = [
    Extension::AbsoluteSendTime,
    Extension::AbsoluteCaptureTime,
    Extension::AudioLevel,
    Extension::TransmissionTimeOffset,
    Extension::VideoOrientation,
    Extension::TransportSequenceNumber,
    Extension::PlayoutDelay,
    Extension::VideoContentType,
    Extension::VideoTiming,
    Extension::RtpStreamId,
    Extension::RepairedRtpStreamId,
    Extension::RtpMid,
    Extension::FrameMarking,
    Extension::ColorSpace,
];

impl Extension {
    /// Its kind in an [`ExtensionMap`]: one plus its index in [`KNOWN`], or [`UNKNOWN_EXT`].
    #[inline(always)]
    fn kind(&self) -> u8 {
        use Extension::*;
        match self {
            AbsoluteSendTime => 1,
            AbsoluteCaptureTime => 2,
            AudioLevel => 3,
            TransmissionTimeOffset => 4,
            VideoOrientation => 5,
            TransportSequenceNumber => 6,
            PlayoutDelay => 7,
            VideoContentType => 8,
            VideoTiming => 9,
            RtpStreamId => 10,
            RepairedRtpStreamId => 11,
            RtpMid => 12,
            FrameMarking => 13,
            ColorSpace => 14,
            UnknownUri(..) => UNKNOWN_EXT,
        }
    }
}

impl ExtensionMap {
    /// Create an empty map.
    pub fn empty() -> Self {
        ExtensionMap {
            kinds: [NO_EXT; MAX_ID as usize],
            mapped: 0,
            locked: 0,
            unknown_ids: 0,
            twice: false,
            first_id: [0; 13],
            unknown: Vec::new(),
        }
    }

    /// Creates a map with the "standard" mappings.
    ///
    /// The standard are taken from Chrome.
    pub fn standard() -> Self {
        let mut exts = Self::empty();

        exts.set(1, Extension::AudioLevel);
        exts.set(2, Extension::AbsoluteSendTime);
        exts.set(3, Extension::TransportSequenceNumber);
        exts.set(4, Extension::RtpMid);
        // exts.set_mapping(&ExtMap::new(8, Extension::ColorSpace));
        exts.set(10, Extension::RtpStreamId);
        exts.set(11, Extension::RepairedRtpStreamId);
        exts.set(13, Extension::VideoOrientation);

        exts
    }

    pub(crate) fn clear(&mut self) {
        self.kinds = [NO_EXT; MAX_ID as usize];
        self.mapped = 0;
        self.locked = 0;
        self.unknown.clear();
        self.reindex();
    }

    /// Parloir patch 91: `first_id`, `unknown_ids` and `twice` from `kinds`, after a change.
    fn reindex(&mut self) {
        self.first_id = [0; 13];
        self.unknown_ids = 0;
        self.twice = false;
        for idx in MappedIds(self.mapped) {
            match self.kinds[idx] {
                NO_EXT => {}
                UNKNOWN_EXT => self.unknown_ids |= 1 << idx,
                k => {
                    // Color space (the last kind) is never written.
                    let Some(first) = self.first_id.get_mut(usize::from(k) - 1) else {
                        continue;
                    };
                    if *first == 0 {
                        *first = idx as u8 + 1;
                    } else {
                        self.twice = true;
                    }
                }
            }
        }
    }

    /// Set a mapping for an extension.
    ///
    /// The id must be in 1..=MAX_ID (1-indexed).
    pub fn set(&mut self, id: u8, ext: Extension) {
        if id < 1 || id > MAX_ID {
            debug!("Set RTP extension out of range 1-{}: {}", MAX_ID, id);
            return;
        }
        let idx = id - 1;

        let kind = ext.kind();
        self.unknown.retain(|(i, _)| *i != idx);
        if kind == UNKNOWN_EXT {
            let at = self.unknown.partition_point(|(i, _)| *i < idx);
            self.unknown.insert(at, (idx, ext));
        }
        self.kinds[idx as usize] = kind;
        self.mapped |= 1 << idx;
        self.locked &= !(1 << idx);
        self.reindex();
    }

    /// The extension at an index (id - 1).
    fn at(&self, idx: usize) -> Option<&Extension> {
        match self.kinds[idx] {
            NO_EXT => None,
            UNKNOWN_EXT => self
                .unknown
                .iter()
                .find(|(i, _)| usize::from(*i) == idx)
                .map(|(_, e)| e),
            k => Some(&KNOWN[usize::from(k) - 1]),
        }
    }

    /// Look up the extension for the id.
    ///
    /// The id must be in 1..=MAX_ID (1-indexed).
    pub fn lookup(&self, id: u8) -> Option<&Extension> {
        if id >= 1 && id <= MAX_ID {
            self.at(id as usize - 1)
        } else {
            debug!("Lookup RTP extension out of range 1-{}: {}", MAX_ID, id);
            None
        }
    }

    /// The index (id - 1) of an extension, if mapped.
    fn index_of(&self, e: &Extension) -> Option<usize> {
        match e.kind() {
            UNKNOWN_EXT => self
                .unknown
                .iter()
                .find(|(_, x)| x == e)
                .map(|(i, _)| usize::from(*i)),
            k => self.kinds.iter().position(|x| *x == k),
        }
    }

    /// Finds the id for an extension (if mapped).
    ///
    /// The returned id will be 1-based.
    #[inline(always)]
    pub fn id_of(&self, e: Extension) -> Option<u8> {
        // Parloir patch 91: a known extension's id at once, in the caller (twice for each
        // packet sent: a call of about 30 instructions for a look-up of two).
        if let Some(&id) = self.first_id.get(usize::from(e.kind()).wrapping_sub(1)) {
            return (id != 0).then_some(id);
        }
        self.index_of(&e).map(|p| p as u8 + 1)
    }

    /// Returns an iterator over the elements of the extension map
    pub fn iter(&self) -> impl Iterator<Item = (u8, &Extension)> + '_ {
        MappedIds(self.mapped).filter_map(|i| self.at(i).map(|e| ((i + 1) as u8, e)))
    }

    /// Returns an iterator over the audio or video elements of the extension map
    pub fn iter_by_media_type(&self, audio: bool) -> impl Iterator<Item = (u8, &Extension)> + '_ {
        self.iter().filter(move |(_id, ext)| {
            if audio {
                ext.is_audio()
            } else {
                ext.is_video()
            }
        })
    }

    /// Returns an iterator over the audio elements of the extension map
    #[allow(unused)]
    pub fn iter_audio(&self) -> impl Iterator<Item = (u8, &Extension)> + '_ {
        self.iter_by_media_type(true)
    }

    /// Returns an iterator over the video elements of the extension map
    #[allow(unused)]
    pub fn iter_video(&self) -> impl Iterator<Item = (u8, &Extension)> + '_ {
        self.iter_by_media_type(false)
    }

    pub(crate) fn cloned_with_type(&self, audio: bool) -> Self {
        let mut x = ExtensionMap::empty();
        for (id, ext) in self.iter_by_media_type(audio) {
            x.set(id, ext.clone());
        }
        x
    }

    // https://tools.ietf.org/html/rfc5285
    pub(crate) fn parse(
        &self,
        mut buf: &[u8],
        form: ExtensionsForm,
        ext_vals: &mut ExtensionValues,
    ) {
        loop {
            if buf.is_empty() {
                return;
            }

            if buf[0] == 0 {
                // padding
                buf = &buf[1..];
                continue;
            }

            let (id, len) = match form {
                ExtensionsForm::OneByte => {
                    let id = buf[0] >> 4;
                    let len = (buf[0] & 0xf) as usize + 1;
                    buf = &buf[1..];

                    if id == 15 {
                        // If the ID value 15 is
                        // encountered, its length field should be ignored, processing of the
                        // entire extension should terminate at that point, and only the
                        // extension elements present prior to the element with ID 15
                        // considered.
                        return;
                    }
                    (id, len)
                }
                ExtensionsForm::TwoByte => {
                    if buf.len() < 2 {
                        trace!("Not enough ext header len: {} < {}", buf.len(), 2);
                        return;
                    }
                    let id = buf[0];
                    let len = buf[1] as usize;
                    buf = &buf[2..];
                    (id, len)
                }
            };

            if buf.len() < len {
                trace!("Not enough type ext len: {} < {}", buf.len(), len);
                return;
            }

            let ext_buf = &buf[..len];
            if let Some(ext) = self.lookup(id) {
                ext.parse_value(ext_buf, ext_vals);
            }

            buf = &buf[len..];
        }
    }

    pub(crate) fn form(&self, ev: &ExtensionValues) -> ExtensionsForm {
        // Parloir patch 73: an id above the one-byte form's, or an extension str0m does not
        // know whose serializer asks for the two-byte form (those it knows never do).
        if self.mapped >> MAX_ID_ONE_BYTE_FORM != 0
            || self
                .unknown
                .iter()
                .any(|(_, ext)| ext.requires_two_byte_form(ev))
        {
            ExtensionsForm::TwoByte
        } else {
            ExtensionsForm::OneByte
        }
    }

    pub(crate) fn write_to(
        &self,
        ext_buf: &mut [u8],
        ev: &ExtensionValues,
        form: ExtensionsForm,
    ) -> usize {
        let orig_len = ext_buf.len();
        let mut b = ext_buf;

        // Parloir patch 91: only the ids whose extension has a value to write (or is one
        // str0m does not know, whose serializer decides), found from the values. A
        // subscriber's m-line maps about ten extensions and a packet carries values for two
        // or three of them: each of the others was a call that looked its value up to find it
        // absent (the calls came to about 300 instructions per datagram sent in Parloir's
        // forwarding bench at 50 participants, now about 220: writing the values).
        let present = ev.known_present();
        let ids = if self.twice {
            self.mapped
        } else {
            let mut ids = self.unknown_ids;
            let mut kinds = present;
            while kinds != 0 {
                let id = self.first_id[kinds.trailing_zeros() as usize];
                kinds &= kinds - 1;
                if id != 0 {
                    ids |= 1 << (id - 1);
                }
            }
            ids
        };
        // The walk over every mapped id (`twice`) asks each, as before: one without a value
        // writes nothing.
        for idx in MappedIds(ids) {
            let Some(ext) = self.at(idx) else {
                continue;
            };
            let id = idx as u8 + 1;
            match form {
                ExtensionsForm::OneByte => {
                    if let Some(n) = ext.write_to(&mut b[1..], ev) {
                        assert!(n <= 16);
                        assert!(n > 0);
                        b[0] = id << 4 | (n as u8 - 1);
                        b = &mut b[1 + n..];
                    }
                }
                ExtensionsForm::TwoByte => {
                    if let Some(n) = ext.write_to(&mut b[2..], ev) {
                        b[0] = id;
                        b[1] = n as u8;
                        b = &mut b[2 + n..];
                    }
                }
            };
        }

        orig_len - b.len()
    }

    pub(crate) fn remap(&mut self, remote_exts: &[(u8, &Extension)]) {
        // Match remote numbers and lock down those we see for the first time.
        for (id, ext) in remote_exts {
            self.swap(*id, ext);
        }
    }

    fn swap(&mut self, id: u8, ext: &Extension) {
        if id < 1 || id > MAX_ID {
            return;
        }

        // Mapping goes from 0 to 13.
        let new_index = id as usize - 1;

        let Some(old_index) = self.index_of(ext) else {
            return;
        };

        let is_change = new_index != old_index;

        // If either audio or video is locked, we got a previous extmap negotiation.
        if is_change && self.locked & (1 << old_index) != 0 {
            warn!(
                "Extmap locked by previous negotiation. Ignore change: {} -> {}",
                old_index, new_index
            );
            return;
        }

        // Locking must be done regardless of whether there was an actual change.
        self.locked |= 1 << old_index;

        if !is_change {
            return;
        }

        // The two entries change places, each with its lock.
        self.kinds.swap(old_index, new_index);
        let swap_bits = |bits: &mut u16| {
            let bit = |i: usize| (*bits >> i) & 1;
            let (old_bit, new_bit) = (bit(old_index), bit(new_index));
            *bits &= !((1 << old_index) | (1 << new_index));
            *bits |= (old_bit << new_index) | (new_bit << old_index);
        };
        swap_bits(&mut self.locked);
        swap_bits(&mut self.mapped);
        for (i, _) in &mut self.unknown {
            if usize::from(*i) == old_index {
                *i = new_index as u8;
            } else if usize::from(*i) == new_index {
                *i = old_index as u8;
            }
        }
        self.unknown.sort_by_key(|(i, _)| *i);
        self.reindex();
    }
}

impl Extension {
    pub(crate) fn write_to(&self, buf: &mut [u8], ev: &ExtensionValues) -> Option<usize> {
        use Extension::*;
        match self {
            AbsoluteSendTime => {
                // 24 bit fixed point 6 bits for seconds, 18 for the decimals.
                // wraps around at 64 seconds.

                // We assume the Instant is absolute.
                let time_abs = ev.abs_send_time?;

                // Parloir patch 83: once per instant, without the rebase's 128-bit
                // arithmetic (see `abs_send_time_24`).
                let time_24 = abs_send_time_24(time_abs);

                buf[..3].copy_from_slice(&time_24.to_be_bytes()[1..]);
                Some(3)
            }
            AbsoluteCaptureTime => {
                let act = ev.abs_capture_time.as_ref()?;
                let ntp_64 = act.capture_time.as_ntp_64();

                if let Some(offset) = act.clock_offset {
                    if buf.len() < 16 {
                        return None;
                    }
                    buf[..8].copy_from_slice(&ntp_64.to_be_bytes());
                    buf[8..16].copy_from_slice(&offset.to_be_bytes());
                    Some(16)
                } else {
                    if buf.len() < 8 {
                        return None;
                    }
                    buf[..8].copy_from_slice(&ntp_64.to_be_bytes());
                    Some(8)
                }
            }
            AudioLevel => {
                let v1 = ev.audio_level?;
                let v2 = ev.voice_activity?;
                // `v1` is negative, so masking it before negating leaves the
                // sign bit in place: for -37 the expression `-(0x7f & v1)`
                // yields 0xA5, which already has bit 7 set. Taking the
                // magnitude first keeps the sign out of the V bit.
                buf[0] = if v2 { 0x80 } else { 0 } | (v1.unsigned_abs() & 0x7f);
                Some(1)
            }
            TransmissionTimeOffset => {
                let v = ev.tx_time_offs?;
                buf[..4].copy_from_slice(&v.to_be_bytes());
                Some(4)
            }
            VideoOrientation => {
                let v = ev.video_orientation?;
                buf[0] = v as u8;
                Some(1)
            }
            TransportSequenceNumber => {
                let v = ev.transport_cc?;
                buf[..2].copy_from_slice(&v.to_be_bytes());
                Some(2)
            }
            PlayoutDelay => {
                let v1 = ev.play_delay_min?.rebase(Frequency::HUNDREDTHS);
                let v2 = ev.play_delay_max?.rebase(Frequency::HUNDREDTHS);
                let min = (v1.numer() & 0xfff) as u32;
                let max = (v2.numer() & 0xfff) as u32;
                buf[0] = (min >> 4) as u8;
                buf[1] = (min << 4) as u8 | (max >> 8) as u8;
                buf[2] = max as u8;
                Some(3)
            }
            VideoContentType => {
                let v = ev.video_content_type?;
                buf[0] = v;
                Some(1)
            }
            VideoTiming => {
                let v = ev.video_timing?;
                buf[0] = v.flags;
                buf[1..3].copy_from_slice(&v.encode_start.to_be_bytes());
                buf[3..5].copy_from_slice(&v.encode_finish.to_be_bytes());
                buf[5..7].copy_from_slice(&v.packetize_complete.to_be_bytes());
                buf[7..9].copy_from_slice(&v.last_left_pacer.to_be_bytes());
                // Reserved for network
                buf[9..11].copy_from_slice(&0_u16.to_be_bytes());
                buf[11..13].copy_from_slice(&0_u16.to_be_bytes());
                Some(13)
            }
            RtpStreamId => {
                let v = ev.rid?;
                let b = v.as_bytes();
                buf[..b.len()].copy_from_slice(b);
                Some(b.len())
            }
            RepairedRtpStreamId => {
                let v = ev.rid_repair?;
                let b = v.as_bytes();
                buf[..b.len()].copy_from_slice(b);
                Some(b.len())
            }
            RtpMid => {
                let v = ev.mid?;
                let b = v.as_bytes();
                buf[..b.len()].copy_from_slice(b);
                Some(b.len())
            }
            FrameMarking => {
                let v = ev.frame_mark?;
                buf[..4].copy_from_slice(&v.to_be_bytes());
                Some(4)
            }
            ColorSpace => {
                // TODO HDR color space
                None
            }
            UnknownUri(_, serializer) => {
                let n = serializer.write_to(buf, ev);

                if n == 0 { None } else { Some(n) }
            }
        }
    }

    pub(crate) fn parse_value(&self, buf: &[u8], ev: &mut ExtensionValues) -> Option<()> {
        use Extension::*;
        match self {
            // 3
            AbsoluteSendTime => {
                // 24 bit fixed point 6 bits for seconds, 18 for the decimals.
                // wraps around at 64 seconds.
                if buf.len() < 3 {
                    return None;
                }
                let time_24 = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);

                // Rebase to micros
                let time_micros = MediaTime::from_fixed_point_6_18(time_24 as u64)
                    .rebase(Frequency::MICROS)
                    .numer();

                // This should be the duration in 0-64 seconds from a fixed 64 second offset
                // from UNIX EPOCH. For now, we must save this as offset from _something else_ and
                // fix the correct value when we have the exact Instant::now() to relate it to.
                let time_dur = Duration::from_micros(time_micros);

                let time_tmp = already_happened() + time_dur;
                ev.abs_send_time = Some(time_tmp);
            }
            // 8 or 16
            AbsoluteCaptureTime => {
                if buf.len() < 8 {
                    return None;
                }
                let ntp_64 = u64::from_be_bytes(buf[..8].try_into().unwrap());
                let clock_offset =
                    (buf.len() >= 16).then(|| i64::from_be_bytes(buf[8..16].try_into().unwrap()));
                ev.abs_capture_time = Some(AbsCaptureTime {
                    capture_time: SystemTime::from_ntp_64(ntp_64),
                    clock_offset,
                });
            }
            // 1
            AudioLevel => {
                if buf.is_empty() {
                    return None;
                }
                ev.audio_level = Some(-(0x7f & buf[0] as i8));
                ev.voice_activity = Some(buf[0] & 0x80 > 0);
            }
            // 3
            TransmissionTimeOffset => {
                if buf.len() < 4 {
                    return None;
                }
                ev.tx_time_offs = Some(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
            // 1
            VideoOrientation => {
                if buf.is_empty() {
                    return None;
                }
                ev.video_orientation = Some(super::ext::VideoOrientation::from(buf[0] & 3));
            }
            // 2
            TransportSequenceNumber => {
                if buf.len() < 2 {
                    return None;
                }
                ev.transport_cc = Some(u16::from_be_bytes([buf[0], buf[1]]));
            }
            // 3
            PlayoutDelay => {
                if buf.len() < 3 {
                    return None;
                }
                let min = (buf[0] as u32) << 4 | (buf[1] as u32) >> 4;
                let max = ((buf[1] & 0xf) as u32) << 8 | buf[2] as u32;
                ev.play_delay_min = Some(MediaTime::from_hundredths(min as u64));
                ev.play_delay_max = Some(MediaTime::from_hundredths(max as u64));
            }
            // 1
            VideoContentType => {
                if buf.is_empty() {
                    return None;
                }
                ev.video_content_type = Some(buf[0]);
            }
            // 13
            VideoTiming => {
                if buf.len() < 9 {
                    return None;
                }
                ev.video_timing = Some(self::VideoTiming {
                    flags: buf[0],
                    encode_start: u16::from_be_bytes([buf[1], buf[2]]),
                    encode_finish: u16::from_be_bytes([buf[3], buf[4]]),
                    packetize_complete: u16::from_be_bytes([buf[5], buf[6]]),
                    last_left_pacer: u16::from_be_bytes([buf[7], buf[8]]),
                    //  9 - 10 // reserved for network
                    // 11 - 12 // reserved for network
                });
            }
            RtpStreamId => {
                let s = from_utf8(buf).ok()?;
                ev.rid = Some(s.into());
            }
            RepairedRtpStreamId => {
                let s = from_utf8(buf).ok()?;
                ev.rid_repair = Some(s.into());
            }
            RtpMid => {
                let s = from_utf8(buf).ok()?;
                ev.mid = Some(s.into());
            }
            FrameMarking => {
                if buf.len() < 4 {
                    return None;
                }
                ev.frame_mark = Some(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
            ColorSpace => {
                // TODO HDR color space
            }
            UnknownUri(_, serializer) => {
                let success = serializer.parse_value(buf, ev);
                if !success {
                    return None;
                }
            }
        }

        Some(())
    }
}

/// Values in an RTP header extension.
///
/// This is metadata that is available also without decrypting the SRTP packets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExtensionValues {
    /// Audio level is measured in negative decibel. 0 is max and a "normal" value might be -30.
    pub audio_level: Option<i8>,

    /// Indication that there is sound from a voice.
    pub voice_activity: Option<bool>,

    /// Tell a receiver what rotation a video need to replay correctly.
    pub video_orientation: Option<VideoOrientation>,

    // The values below are considered internal until we have a reason to expose them.
    // Generally we want to avoid expose experimental features unless there are strong
    // reasons to do so.
    #[doc(hidden)]
    pub video_content_type: Option<u8>, // 0 = unspecified, 1 = screenshare
    #[doc(hidden)]
    pub tx_time_offs: Option<u32>,
    #[doc(hidden)]
    pub abs_send_time: Option<Instant>,
    #[doc(hidden)]
    pub abs_capture_time: Option<AbsCaptureTime>,
    #[doc(hidden)]
    pub transport_cc: Option<u16>, // (buf[0] << 8) | buf[1];
    #[doc(hidden)]
    // https://webrtc.googlesource.com/src/+/refs/heads/master/docs/native-code/rtp-hdrext/playout-delay
    pub play_delay_min: Option<MediaTime>,
    #[doc(hidden)]
    pub play_delay_max: Option<MediaTime>,
    #[doc(hidden)]
    pub video_timing: Option<VideoTiming>,
    #[doc(hidden)]
    pub rid: Option<Rid>,
    #[doc(hidden)]
    pub rid_repair: Option<Rid>,
    #[doc(hidden)]
    pub mid: Option<Mid>,
    #[doc(hidden)]
    pub frame_mark: Option<u32>,

    /// User values for [`ExtensionSerializer`] to parse into and write from.
    pub user_values: UserExtensionValues,
}
impl ExtensionValues {
    /// Parloir patch 91: bit `kind - 1` set for each extension str0m knows (its kind in an
    /// [`ExtensionMap`]) whose value is here, so that writing skips the others without a
    /// call. A superset of those `Extension::write_to` writes: it may still find a second
    /// value missing (audio level without voice activity, playout delay without its
    /// maximum); color space is never written.
    #[inline]
    fn known_present(&self) -> u16 {
        let bit = |present: bool, kind: u8| u16::from(present) << (kind - 1);
        bit(self.abs_send_time.is_some(), 1)
            | bit(self.abs_capture_time.is_some(), 2)
            | bit(self.audio_level.is_some(), 3)
            | bit(self.tx_time_offs.is_some(), 4)
            | bit(self.video_orientation.is_some(), 5)
            | bit(self.transport_cc.is_some(), 6)
            | bit(self.play_delay_min.is_some(), 7)
            | bit(self.video_content_type.is_some(), 8)
            | bit(self.video_timing.is_some(), 9)
            | bit(self.rid.is_some(), 10)
            | bit(self.rid_repair.is_some(), 11)
            | bit(self.mid.is_some(), 12)
            | bit(self.frame_mark.is_some(), 13)
    }

    pub(crate) fn update_absolute_send_time(&mut self, now: Instant) {
        let Some(v) = self.abs_send_time else {
            return;
        };

        // This should be 0-64 seconds, or we are not working with a newly parsed value.
        let relative_64_secs = v - already_happened();
        assert!(relative_64_secs <= Duration::from_secs(64));

        let now_since_epoch = now.to_unix_duration();

        let closest_64 = now_since_epoch.saturating_sub(Duration::from_micros(
            now_since_epoch.as_micros() as u64 % 64_000_000,
        ));

        let since_beginning = closest_64.saturating_sub(epoch_to_beginning());

        let mut offset = already_happened() + since_beginning;

        if offset + relative_64_secs > now {
            offset = offset
                .checked_sub(Duration::from_secs(64))
                .unwrap_or(offset);
        }

        self.abs_send_time = Some(offset + relative_64_secs);
    }
}

/// Space for storing user extension values via [`ExtensionSerializer`].
#[derive(Clone, Default)]
pub struct UserExtensionValues {
    map: Option<AnyMap>,
}

// The "AnyMap" idea is borrowed from the http crate but replacing Box for Any.
type AnyMap = HashMap<TypeId, Arc<dyn Any + Send + Sync>, BuildHasherDefault<IdHasher>>;

// No point in hashing the TypeId, since it is already unique.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, _: &[u8]) {
        unreachable!("TypeId calls write_u64");
    }

    #[inline]
    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

// TODO: I don't see a good way of comparing this. Is there one?
impl PartialEq for UserExtensionValues {
    fn eq(&self, other: &Self) -> bool {
        let (Some(m1), Some(m2)) = (&self.map, &other.map) else {
            return self.map.is_none() == other.map.is_none();
        };

        for k1 in m1.keys() {
            if !m2.contains_key(k1) {
                return false;
            }
        }

        for k2 in m2.keys() {
            if !m1.contains_key(k2) {
                return false;
            }
        }

        true
    }
}

impl Eq for UserExtensionValues {}

impl UserExtensionValues {
    /// Parloir patch 28: whether no user value is set.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.as_ref().is_none_or(|map| map.is_empty())
    }

    /// Set a user extension value.
    ///
    /// This uses the type of the value as "key", i.e. it can only hold a single
    /// per type. The user should make a wrapper type for the extension they want
    /// to parse/write.
    ///
    /// ```
    /// # use str0m::rtp::ExtensionValues;
    /// let mut exts = ExtensionValues::default();
    ///
    /// #[derive(Debug, PartialEq, Eq)]
    /// struct MySpecialType(u8);
    ///
    /// exts.user_values.set(MySpecialType(42));
    /// ```
    pub fn set<T: Send + Sync + 'static>(&mut self, val: T) {
        // TODO: Consider simplifying to "self.set_arc(Arc::new(val))";
        self.map
            .get_or_insert_with(HashMap::default)
            .insert(TypeId::of::<T>(), Arc::new(val));
    }

    /// Get a user extension value (by type).
    /// ```
    /// # use str0m::rtp::ExtensionValues;
    /// let mut exts = ExtensionValues::default();
    ///
    /// #[derive(Debug, PartialEq, Eq)]
    /// struct MySpecialType(u8);
    ///
    /// exts.user_values.set(MySpecialType(42));
    ///
    /// let v = exts.user_values.get::<MySpecialType>();
    ///
    /// assert_eq!(v, Some(&MySpecialType(42)));
    /// ```
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.map
            .as_ref()
            .and_then(|map| map.get(&TypeId::of::<T>()))
            // unwrap here is OK because TypeId::of::<T> is guaranteed to be unique
            .map(|boxed| (&**boxed as &(dyn Any + 'static)).downcast_ref().unwrap())
    }

    /// Like .set(), but takes an Arc, which can be nice to avoid cloning
    /// large extension values.
    pub fn set_arc<T: Send + Sync + 'static>(&mut self, val: Arc<T>) {
        self.map
            .get_or_insert_with(HashMap::default)
            .insert(TypeId::of::<T>(), val);
    }

    /// Like .get(), but clones and returns the Arc, which can be nice to
    /// avoid cloning large extension values.
    pub fn get_arc<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.map
            .as_ref()?
            .get(&TypeId::of::<T>())?
            .clone()
            .downcast()
            .ok()
    }

    /// Remove a user extension value (by type).
    pub fn remove<T: Send + Sync + 'static>(&mut self) {
        if let Some(map) = &mut self.map {
            map.remove(&TypeId::of::<T>());
        }
    }
}

impl UnwindSafe for UserExtensionValues {}

impl fmt::Debug for ExtensionValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExtensionValues {{")?;

        if let Some(t) = self.mid {
            write!(f, " mid: {t}")?;
        }
        if let Some(t) = self.rid {
            write!(f, " rid: {t}")?;
        }
        if let Some(t) = self.rid_repair {
            write!(f, " rid_repair: {t}")?;
        }
        if let Some(t) = self.abs_send_time {
            write!(f, " abs_send_time: {:?}", t)?;
        }
        if let Some(t) = &self.abs_capture_time {
            write!(f, " abs_capture_time: {:?}", t)?;
        }
        if let Some(t) = self.voice_activity {
            write!(f, " voice_activity: {t}")?;
        }
        if let Some(t) = self.audio_level {
            write!(f, " audio_level: {t}")?;
        }
        if let Some(t) = self.tx_time_offs {
            write!(f, " tx_time_offs: {t}")?;
        }
        if let Some(t) = self.video_orientation {
            write!(f, " video_orientation: {t:?}")?;
        }
        if let Some(t) = self.transport_cc {
            write!(f, " transport_cc: {t}")?;
        }
        if let Some(t) = self.play_delay_min {
            write!(f, " play_delay_min: {}", t.as_seconds())?;
        }
        if let Some(t) = self.play_delay_max {
            write!(f, " play_delay_max: {}", t.as_seconds())?;
        }
        if let Some(t) = self.video_content_type {
            write!(f, " video_content_type: {t}")?;
        }
        if let Some(t) = &self.video_timing {
            write!(f, " video_timing: {t:?}")?;
        }
        if let Some(t) = &self.frame_mark {
            write!(f, " frame_mark: {t}")?;
        }

        write!(f, " }}")?;
        Ok(())
    }
}

/// Absolute capture time from the `abs-capture-time` RTP header extension.
///
/// Contains the NTP wall-clock timestamp of original frame capture, and
/// optionally the sender's estimate of the offset between its own clock
/// and the capture system's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsCaptureTime {
    /// NTP wall-clock timestamp of original frame capture.
    pub capture_time: SystemTime,
    /// Sender's estimate of offset between its own NTP clock and the
    /// capture system's NTP clock. Signed NTP fixed-point (Q32.32):
    /// upper 32 bits whole seconds, lower 32 bits fractional.
    pub clock_offset: Option<i64>,
}

/// 2^32 as f64, for NTP Q32.32 fixed-point conversion.
const NTP_F32: f64 = 4_294_967_296.0;

impl AbsCaptureTime {
    /// Clock offset in seconds, if present.
    ///
    /// Per the spec: `Capture NTP Clock = Sender NTP Clock + offset`.
    pub fn clock_offset_secs(&self) -> Option<f64> {
        self.clock_offset.map(|v| v as f64 / NTP_F32)
    }

    /// Set the clock offset in seconds.
    pub fn set_clock_offset(&mut self, secs: f64) {
        self.clock_offset = Some((secs * NTP_F32) as i64);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoTiming {
    // 0x01 = extension is set due to timer.
    // 0x02 - extension is set because the frame is larger than usual.
    pub flags: u8,
    pub encode_start: u16,
    pub encode_finish: u16,
    pub packetize_complete: u16,
    pub last_left_pacer: u16,
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Extension::*;
        write!(
            f,
            "{}",
            match self {
                AbsoluteSendTime => "abs-send-time",
                AbsoluteCaptureTime => "abs-capture-time",
                AudioLevel => "ssrc-audio-level",
                TransmissionTimeOffset => "toffset",
                VideoOrientation => "video-orientation",
                TransportSequenceNumber => "transport-wide-cc",
                PlayoutDelay => "playout-delay",
                VideoContentType => "video-content-type",
                VideoTiming => "video-timing",
                RtpStreamId => "rtp-stream-id",
                RepairedRtpStreamId => "repaired-rtp-stream-id",
                RtpMid => "mid",
                FrameMarking => "frame-marking07",
                ColorSpace => "color-space",
                UnknownUri(uri, _) => uri,
            }
        )
    }
}

impl fmt::Debug for ExtensionMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extensions(")?;
        let joined = self
            .iter()
            .map(|(i, v)| format!("{}={}", i, v))
            .collect::<Vec<_>>()
            .join(", ");
        write!(f, "{joined}")?;
        write!(f, ")")?;
        Ok(())
    }
}

/// How the video is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoOrientation {
    /// Not rotated.
    Deg0 = 0,
    /// 90 degress clockwise.
    Deg90 = 3,
    /// Upside down.
    Deg180 = 2,
    /// 90 degrees counter clockwise.
    Deg270 = 1,
}

#[cfg(feature = "drv")]
crate::drv_identity_copy!(VideoOrientation);

impl From<u8> for VideoOrientation {
    fn from(value: u8) -> Self {
        match value {
            1 => Self::Deg270,
            2 => Self::Deg180,
            3 => Self::Deg90,
            _ => Self::Deg0,
        }
    }
}

impl PartialEq for Extension {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Extension::AbsoluteSendTime, Extension::AbsoluteSendTime) => true,
            (Extension::AbsoluteCaptureTime, Extension::AbsoluteCaptureTime) => true,
            (Extension::AudioLevel, Extension::AudioLevel) => true,
            (Extension::TransmissionTimeOffset, Extension::TransmissionTimeOffset) => true,
            (Extension::VideoOrientation, Extension::VideoOrientation) => true,
            (Extension::TransportSequenceNumber, Extension::TransportSequenceNumber) => true,
            (Extension::PlayoutDelay, Extension::PlayoutDelay) => true,
            (Extension::VideoContentType, Extension::VideoContentType) => true,
            (Extension::VideoTiming, Extension::VideoTiming) => true,
            (Extension::RtpStreamId, Extension::RtpStreamId) => true,
            (Extension::RepairedRtpStreamId, Extension::RepairedRtpStreamId) => true,
            (Extension::RtpMid, Extension::RtpMid) => true,
            (Extension::FrameMarking, Extension::FrameMarking) => true,
            (Extension::ColorSpace, Extension::ColorSpace) => true,
            (Extension::UnknownUri(uri1, _), Extension::UnknownUri(uri2, _)) => uri1 == uri2,
            _ => false,
        }
    }
}

impl Eq for Extension {}

#[cfg(test)]
mod test {
    use super::*;

    /// Parloir patch 83: the extension's value is the rebase's, for instants spread over
    /// hours and microseconds, converted one after the other and again out of turn.
    #[test]
    fn abs_send_time_is_the_rebased_unix_time() {
        let rebased = |t: Instant| {
            MediaTime::from(t.to_unix_duration())
                .rebase(Frequency::FIXED_POINT_6_18)
                .numer() as u32
                & 0xff_ffff
        };
        let start = Instant::now();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut instants = vec![start];
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Up to about 3 hours ahead, to the nanosecond.
            instants.push(start + Duration::from_nanos(x % 10_995_116_277_760));
        }
        // Whole seconds and the microseconds around them (a carry into the seconds).
        for s in 0..130 {
            for ns in [0, 999, 1_000, 999_999_000, 999_999_999] {
                instants.push(start + Duration::new(s, ns));
            }
        }
        for (i, &t) in instants.iter().enumerate() {
            assert_eq!(abs_send_time_24(t), rebased(t), "{t:?}");
            // The same instant again (the memo), then an earlier one.
            assert_eq!(abs_send_time_24(t), rebased(t), "{t:?} again");
            let earlier = instants[i / 2];
            assert_eq!(abs_send_time_24(earlier), rebased(earlier), "{earlier:?}");
        }
    }

    #[test]
    fn abs_send_time() {
        let now = Instant::now() + Duration::from_secs(1000);

        let mut exts = ExtensionMap::empty();
        exts.set(4, Extension::AbsoluteSendTime);
        let ev = ExtensionValues {
            abs_send_time: Some(now),
            ..Default::default()
        };

        let mut buf = vec![0_u8; 8];
        exts.write_to(&mut buf[..], &ev, ExtensionsForm::OneByte);

        let mut ev2 = ExtensionValues::default();
        exts.parse(&buf, ExtensionsForm::OneByte, &mut ev2);

        // Let's pretend a 50 millisecond network latency.
        ev2.update_absolute_send_time(now + Duration::from_millis(50));

        let now2 = ev2.abs_send_time.unwrap();

        let abs = if now > now2 { now - now2 } else { now2 - now };

        assert!(abs < Duration::from_millis(1));
    }

    #[test]
    fn abs_send_time_two_byte_form() {
        let now = Instant::now() + Duration::from_secs(1000);

        let mut exts = ExtensionMap::empty();
        exts.set(16, Extension::AbsoluteSendTime);
        let ev = ExtensionValues {
            abs_send_time: Some(now),
            ..Default::default()
        };

        let mut buf = vec![0_u8; 8];
        assert_eq!(ExtensionsForm::TwoByte, exts.form(&ev));
        exts.write_to(&mut buf[..], &ev, ExtensionsForm::TwoByte);

        let mut ev2 = ExtensionValues::default();
        exts.parse(&buf, ExtensionsForm::TwoByte, &mut ev2);

        // Let's pretend a 50 millisecond network latency.
        ev2.update_absolute_send_time(now + Duration::from_millis(50));

        let now2 = ev2.abs_send_time.unwrap();

        let abs = if now > now2 { now - now2 } else { now2 - now };

        assert!(abs < Duration::from_millis(1));
    }

    #[test]
    fn abs_capture_time_short_form() {
        let now = SystemTime::now();

        let mut exts = ExtensionMap::empty();
        exts.set(5, Extension::AbsoluteCaptureTime);
        let ev = ExtensionValues {
            abs_capture_time: Some(AbsCaptureTime {
                capture_time: now,
                clock_offset: None,
            }),
            ..Default::default()
        };

        let mut buf = vec![0_u8; 16];
        exts.write_to(&mut buf[..], &ev, ExtensionsForm::OneByte);

        let mut ev2 = ExtensionValues::default();
        exts.parse(&buf, ExtensionsForm::OneByte, &mut ev2);

        let act = ev2.abs_capture_time.unwrap();

        // Allow for small rounding errors in NTP conversion
        let abs = if now > act.capture_time {
            now.duration_since(act.capture_time)
        } else {
            act.capture_time.duration_since(now)
        }
        .unwrap();

        assert!(abs < Duration::from_millis(1));
        assert_eq!(act.clock_offset, None);
    }

    #[test]
    fn abs_capture_time_extended_form() {
        let now = SystemTime::now();
        let clock_offset: i64 = 123456789;

        let mut exts = ExtensionMap::empty();
        exts.set(5, Extension::AbsoluteCaptureTime);
        let ev = ExtensionValues {
            abs_capture_time: Some(AbsCaptureTime {
                capture_time: now,
                clock_offset: Some(clock_offset),
            }),
            ..Default::default()
        };

        let mut buf = vec![0_u8; 24];
        exts.write_to(&mut buf[..], &ev, ExtensionsForm::OneByte);

        let mut ev2 = ExtensionValues::default();
        exts.parse(&buf, ExtensionsForm::OneByte, &mut ev2);

        let act = ev2.abs_capture_time.unwrap();

        // Allow for small rounding errors in NTP conversion
        let abs = if now > act.capture_time {
            now.duration_since(act.capture_time)
        } else {
            act.capture_time.duration_since(now)
        }
        .unwrap();

        assert!(abs < Duration::from_millis(1));
        assert_eq!(act.clock_offset, Some(clock_offset));
    }

    #[test]
    fn abs_capture_time_two_byte_form() {
        let now = SystemTime::now();
        let clock_offset: i64 = -987654321;

        let mut exts = ExtensionMap::empty();
        exts.set(16, Extension::AbsoluteCaptureTime);
        let ev = ExtensionValues {
            abs_capture_time: Some(AbsCaptureTime {
                capture_time: now,
                clock_offset: Some(clock_offset),
            }),
            ..Default::default()
        };

        // Should require two-byte form due to extension ID > 14
        assert_eq!(ExtensionsForm::TwoByte, exts.form(&ev));

        let mut buf = vec![0_u8; 24];
        exts.write_to(&mut buf[..], &ev, ExtensionsForm::TwoByte);

        let mut ev2 = ExtensionValues::default();
        exts.parse(&buf, ExtensionsForm::TwoByte, &mut ev2);

        let act = ev2.abs_capture_time.unwrap();

        // Allow for small rounding errors in NTP conversion
        let abs = if now > act.capture_time {
            now.duration_since(act.capture_time)
        } else {
            act.capture_time.duration_since(now)
        }
        .unwrap();

        assert!(abs < Duration::from_millis(1));
        assert_eq!(act.clock_offset, Some(clock_offset));
    }

    #[test]
    fn playout_delay() {
        let mut exts = ExtensionMap::empty();
        exts.set(2, Extension::PlayoutDelay);
        let ev = ExtensionValues {
            play_delay_min: Some(MediaTime::from_hundredths(100)),
            play_delay_max: Some(MediaTime::from_hundredths(200)),
            ..Default::default()
        };

        let mut buf = vec![0_u8; 8];
        exts.write_to(&mut buf[..], &ev, ExtensionsForm::OneByte);

        let mut ev2 = ExtensionValues::default();
        exts.parse(&buf, ExtensionsForm::OneByte, &mut ev2);

        assert_eq!(ev.play_delay_min, ev2.play_delay_min);
        assert_eq!(ev.play_delay_max, ev2.play_delay_max);
    }

    #[test]
    fn remap_exts_audio() {
        use Extension::*;

        let mut e1 = ExtensionMap::standard();
        let mut e2 = ExtensionMap::empty();
        e2.set(14, TransportSequenceNumber);

        println!("{:?}", e1.iter_video().collect::<Vec<_>>());

        e1.remap(&e2.iter_audio().collect::<Vec<_>>());

        // e1 should have adjusted the TransportSequenceNumber for audio
        assert_eq!(
            e1.iter_audio().collect::<Vec<_>>(),
            vec![
                (1, &AudioLevel),
                (2, &AbsoluteSendTime),
                (4, &RtpMid),
                (10, &RtpStreamId),
                (11, &RepairedRtpStreamId),
                (14, &TransportSequenceNumber)
            ]
        );

        // e1 should have adjusted the TransportSequenceNumber for vudeo
        assert_eq!(
            e1.iter_video().collect::<Vec<_>>(),
            vec![
                (2, &AbsoluteSendTime),
                (4, &RtpMid),
                (10, &RtpStreamId),
                (11, &RepairedRtpStreamId),
                (13, &VideoOrientation),
                (14, &TransportSequenceNumber),
            ]
        );
    }

    #[test]
    fn remap_exts_video() {
        use Extension::*;

        let mut e1 = ExtensionMap::empty();
        e1.set(3, TransportSequenceNumber);
        e1.set(4, VideoOrientation);
        e1.set(5, VideoContentType);
        let mut e2 = ExtensionMap::empty();
        e2.set(14, TransportSequenceNumber);
        e2.set(12, VideoOrientation);

        e1.remap(&e2.iter_video().collect::<Vec<_>>());

        // e1 should have adjusted to e2.
        assert_eq!(
            e1.iter_video().collect::<Vec<_>>(),
            vec![
                (5, &VideoContentType),
                (12, &VideoOrientation),
                (14, &TransportSequenceNumber)
            ]
        );
    }

    #[test]
    fn remap_exts_swaparoo() {
        use Extension::*;

        let mut e1 = ExtensionMap::empty();
        e1.set(12, TransportSequenceNumber);
        e1.set(14, VideoOrientation);
        let mut e2 = ExtensionMap::empty();
        e2.set(14, TransportSequenceNumber);
        e2.set(12, VideoOrientation);

        e1.remap(&e2.iter_video().collect::<Vec<_>>());

        // just make sure the logic isn't wrong for 12-14 -> 14-12
        assert_eq!(
            e1.iter_video().collect::<Vec<_>>(),
            vec![(12, &VideoOrientation), (14, &TransportSequenceNumber)]
        );
    }

    #[test]
    fn remap_exts_illegal() {
        use Extension::*;

        let mut e1 = ExtensionMap::empty();
        e1.set(12, TransportSequenceNumber);
        e1.set(14, VideoOrientation);

        let mut e2 = ExtensionMap::empty();
        e2.set(14, TransportSequenceNumber);
        e2.set(12, VideoOrientation);

        let mut e3 = ExtensionMap::empty();
        // Illegal change of already negotiated/locked number
        e3.set(1, TransportSequenceNumber);
        e3.set(12, AudioLevel); // change of type for existing.

        // First apply e2
        e1.remap(&e2.iter_video().collect::<Vec<_>>());

        println!("{e1:?}");
        assert_eq!(
            e1.iter_video().collect::<Vec<_>>(),
            vec![(12, &VideoOrientation), (14, &TransportSequenceNumber)]
        );

        // Now attempt e3
        e1.remap(&e3.iter_audio().collect::<Vec<_>>());

        println!("{e1:?}");
        // At this point we should have not allowed the change, but remain as it was in first apply.
        assert_eq!(
            e1.iter_video().collect::<Vec<_>>(),
            vec![(12, &VideoOrientation), (14, &TransportSequenceNumber)]
        );
    }

    #[test]
    fn extension_map_kinds_are_the_known_extensions() {
        for (i, e) in KNOWN.iter().enumerate() {
            assert_eq!(usize::from(e.kind()), i + 1, "{e}");
        }
        for (e, uri) in EXT_URI {
            assert_ne!(e.kind(), UNKNOWN_EXT, "{uri}");
            assert_eq!(&KNOWN[usize::from(e.kind()) - 1], e);
        }
        assert_eq!(
            Extension::with_serializer("urn:x", TestSerializer(1)).kind(),
            UNKNOWN_EXT
        );
        // What the patch is for: the map fits a cache line.
        assert!(std::mem::size_of::<ExtensionMap>() <= 64);
    }

    /// Patch 73: the ids walked are those mapped, through every change of the map, and the
    /// form chosen is the one a walk over every id chooses.
    #[test]
    fn mapped_ids_follow_the_map() {
        use Extension::*;
        let every_id = |m: &ExtensionMap| -> Vec<(u8, Extension)> {
            (1..=MAX_ID)
                .filter_map(|id| m.lookup(id).map(|e| (id, e.clone())))
                .collect()
        };
        let walked = |m: &ExtensionMap| -> Vec<(u8, Extension)> {
            m.iter().map(|(id, e)| (id, e.clone())).collect()
        };
        let ev = ExtensionValues::default();
        let mut m = ExtensionMap::standard();
        assert_eq!(walked(&m), every_id(&m));
        assert_eq!(walked(&m).len(), 7);
        // Negotiation moves ids: a known one to an unused id, and two to each other's.
        m.remap(&[
            (7, &AudioLevel),
            (3, &AbsoluteSendTime),
            (2, &TransportSequenceNumber),
        ]);
        assert_eq!(walked(&m), every_id(&m));
        assert_eq!(m.lookup(7), Some(&AudioLevel));
        assert_eq!(m.lookup(1), None);
        m.set(16, VideoOrientation);
        m.set(9, Extension::with_serializer("urn:x", TestSerializer(1)));
        assert_eq!(walked(&m), every_id(&m));
        assert!(
            matches!(m.form(&ev), ExtensionsForm::TwoByte),
            "id 16 needs two bytes"
        );
        let mut one = ExtensionMap::standard();
        assert!(matches!(one.form(&ev), ExtensionsForm::OneByte));
        one.set(14, VideoOrientation);
        assert!(
            matches!(one.form(&ev), ExtensionsForm::OneByte),
            "14 fits one byte"
        );
        one.set(15, ColorSpace);
        assert!(matches!(one.form(&ev), ExtensionsForm::TwoByte));
        m.clear();
        assert!(walked(&m).is_empty());
        assert!(matches!(m.form(&ev), ExtensionsForm::OneByte));
    }

    #[derive(Debug)]
    struct TestSerializer(u8);

    impl ExtensionSerializer for TestSerializer {
        fn write_to(&self, buf: &mut [u8], _ev: &ExtensionValues) -> usize {
            buf[0] = self.0;
            1
        }
        fn parse_value(&self, _buf: &[u8], _ev: &mut ExtensionValues) -> bool {
            true
        }
        fn is_video(&self) -> bool {
            true
        }
        fn is_audio(&self) -> bool {
            false
        }
    }

    #[test]
    fn extension_map_keeps_unknown_uris_by_id() {
        use Extension::*;
        let x = || Extension::with_serializer("urn:x", TestSerializer(0xaa));
        let y = || Extension::with_serializer("urn:y", TestSerializer(0xbb));

        let mut e = ExtensionMap::empty();
        e.set(9, y());
        e.set(3, TransportSequenceNumber);
        e.set(5, x());
        e.set(0, x()); // out of range: ignored
        e.set(17, x());
        assert_eq!(e.lookup(5), Some(&x()));
        assert_eq!(e.lookup(9), Some(&y()));
        assert_eq!(e.lookup(4), None);
        assert_eq!(e.id_of(x()), Some(5));
        assert_eq!(e.id_of(y()), Some(9));
        assert_eq!(e.id_of(TransportSequenceNumber), Some(3));
        assert_eq!(e.id_of(AudioLevel), None);
        let ids: Vec<u8> = e.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![3, 5, 9]);

        // Written in id order, the unknown ones by their own serializer.
        let ev = ExtensionValues {
            transport_cc: Some(0x0102),
            ..Default::default()
        };
        let mut buf = [0_u8; 16];
        let n = e.write_to(&mut buf, &ev, ExtensionsForm::OneByte);
        assert_eq!(&buf[..n], &[0x31, 0x01, 0x02, 0x50, 0xaa, 0x90, 0xbb]);

        // The same map built in another order is equal; replacing an unknown one forgets it.
        let mut f = ExtensionMap::empty();
        f.set(5, x());
        f.set(9, AudioLevel);
        f.set(3, TransportSequenceNumber);
        assert_ne!(e, f);
        f.set(9, y());
        assert_eq!(e, f);
        e.set(5, RtpMid);
        assert_eq!(e.lookup(5), Some(&RtpMid));
        assert_eq!(e.id_of(x()), None);
        e.set(5, x());
        assert_eq!(e, f);

        // Remapping moves an unknown one with its lock, and a locked one stays.
        e.remap(&[(7, &x())]);
        assert_eq!(e.lookup(7), Some(&x()));
        assert_eq!(e.lookup(5), None);
        assert_eq!(e.id_of(x()), Some(7));
        e.remap(&[(2, &x()), (1, &y())]);
        assert_eq!(e.id_of(x()), Some(7), "locked by the first remap");
        assert_eq!(e.id_of(y()), Some(1), "not locked before");
        let ids: Vec<u8> = e.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 3, 7]);
        // The swap moved what was at 1 (nothing) to 9, and the lock with y.
        e.remap(&[(9, &y())]);
        assert_eq!(e.id_of(y()), Some(1));
        e.clear();
        assert_eq!(e, ExtensionMap::empty());
        assert_eq!(
            format!("{f:?}"),
            "Extensions(3=transport-wide-cc, 5=urn:x, 9=urn:y)"
        );
    }

    /// Parloir patch 91: writing only the extensions with a value gives the bytes that
    /// asking every mapped extension gave, for each value alone, each value missing (the
    /// pairs with one half), all and none, in both forms, with unknown extensions, an
    /// extension at two ids, a remapped and a cleared map; each known extension writes only
    /// where `known_present` has its bit, and is found at its lowest id.
    #[test]
    fn extensions_without_a_value_are_skipped_as_before() {
        let now = Instant::now() + Duration::from_secs(1000);
        let full = ExtensionValues {
            audio_level: Some(-30),
            voice_activity: Some(true),
            video_orientation: Some(VideoOrientation::Deg270),
            video_content_type: Some(1),
            tx_time_offs: Some(0x0102_0304),
            abs_send_time: Some(now),
            abs_capture_time: Some(AbsCaptureTime {
                capture_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                clock_offset: Some(-5),
            }),
            transport_cc: Some(0xabcd),
            play_delay_min: Some(MediaTime::from_hundredths(1)),
            play_delay_max: Some(MediaTime::from_hundredths(7)),
            video_timing: Some(VideoTiming {
                flags: 1,
                encode_start: 2,
                encode_finish: 3,
                packetize_complete: 4,
                last_left_pacer: 5,
            }),
            rid: Some("h".into()),
            rid_repair: Some("q".into()),
            mid: Some("12".into()),
            frame_mark: Some(0x0a0b_0c0d),
            user_values: Default::default(),
        };
        // Each value alone, by clearing all the others.
        let clear: [fn(&mut ExtensionValues); 15] = [
            |e| e.audio_level = None,
            |e| e.voice_activity = None,
            |e| e.video_orientation = None,
            |e| e.video_content_type = None,
            |e| e.tx_time_offs = None,
            |e| e.abs_send_time = None,
            |e| e.abs_capture_time = None,
            |e| e.transport_cc = None,
            |e| e.play_delay_min = None,
            |e| e.play_delay_max = None,
            |e| e.video_timing = None,
            |e| e.rid = None,
            |e| e.rid_repair = None,
            |e| e.mid = None,
            |e| e.frame_mark = None,
        ];
        let mut cases = vec![full.clone(), ExtensionValues::default()];
        for keep in 0..clear.len() {
            let mut ev = full.clone();
            for (i, c) in clear.iter().enumerate() {
                if i != keep {
                    c(&mut ev);
                }
            }
            cases.push(ev);
            let mut ev = full.clone();
            clear[keep](&mut ev);
            cases.push(ev);
        }

        // The one-byte form's ids (1 to 14): the known extensions but color space, and an
        // unknown one; the two-byte form's map adds color space and another unknown one (at
        // 15 and 16, the highest id str0m maps).
        let mut map = ExtensionMap::empty();
        for (i, ext) in KNOWN[..13].iter().enumerate() {
            map.set(i as u8 + 1, ext.clone());
        }
        map.set(
            14,
            Extension::with_serializer("urn:x", TestSerializer(0xaa)),
        );
        let mut two_byte = map.clone();
        two_byte.set(15, Extension::ColorSpace);
        two_byte.set(
            16,
            Extension::with_serializer("urn:y", TestSerializer(0xbb)),
        );
        // One known extension at two ids (both written), and a map remapped and cleared.
        let mut twice = map.clone();
        twice.set(15, Extension::TransportSequenceNumber);
        twice.set(16, Extension::ColorSpace);
        let mut remapped = map.clone();
        remapped.remap(&[(9, &Extension::AudioLevel), (2, &Extension::RtpMid)]);
        let mut cleared = map.clone();
        cleared.clear();
        cleared.set(7, Extension::AbsoluteSendTime);

        // What writing was before: every mapped extension asked for its value.
        let reference = |map: &ExtensionMap, ev: &ExtensionValues, form| {
            let mut buf = vec![0_u8; 400];
            let mut at = 0;
            for (id, ext) in map.iter() {
                let head = if form == ExtensionsForm::OneByte {
                    1
                } else {
                    2
                };
                if let Some(n) = ext.write_to(&mut buf[at + head..], ev) {
                    if form == ExtensionsForm::OneByte {
                        buf[at] = id << 4 | (n as u8 - 1);
                    } else {
                        buf[at] = id;
                        buf[at + 1] = n as u8;
                    }
                    at += head + n;
                }
            }
            buf.truncate(at);
            buf
        };
        for ev in &cases {
            let present = ev.known_present();
            for (i, ext) in KNOWN.iter().enumerate() {
                let writes = ext.write_to(&mut [0_u8; 32], ev).is_some();
                assert!(!writes || present & (1 << i) != 0, "{ext} written: {ev:?}");
            }
            for (map, form) in [
                (&map, ExtensionsForm::OneByte),
                (&map, ExtensionsForm::TwoByte),
                (&two_byte, ExtensionsForm::TwoByte),
                (&twice, ExtensionsForm::TwoByte),
                (&remapped, ExtensionsForm::OneByte),
                (&cleared, ExtensionsForm::OneByte),
            ] {
                let mut buf = vec![0_u8; 400];
                let n = map.write_to(&mut buf, ev, form);
                assert_eq!(buf[..n], reference(map, ev, form)[..], "{form:?} {ev:?}");
            }
        }
        // Each known extension is found at its lowest id, as the scan over the ids found it.
        for map in [&map, &two_byte, &twice, &remapped, &cleared] {
            for ext in &KNOWN {
                let scan = map.kinds.iter().position(|k| *k == ext.kind());
                assert_eq!(
                    map.id_of(ext.clone()),
                    scan.map(|i| i as u8 + 1),
                    "{ext} in {map:?}"
                );
            }
        }
        // The full set writes every known extension but color space, and the unknown one.
        let mut buf = vec![0_u8; 400];
        let n = map.write_to(&mut buf, &full, ExtensionsForm::OneByte);
        let mut ev = ExtensionValues::default();
        map.parse(&buf[..n], ExtensionsForm::OneByte, &mut ev);
        assert_eq!(ev.mid, full.mid);
        assert_eq!(ev.frame_mark, full.frame_mark);
        assert_eq!(ev.transport_cc, full.transport_cc);
    }

    #[test]
    fn audio_level_round_trip() {
        // The V bit (voice activity) must survive serialization for every
        // level on the scale, not just when it is set.
        let mut exts = ExtensionMap::empty();
        exts.set(1, Extension::AudioLevel);

        for level in -127..=0 {
            for voice_activity in [false, true] {
                let ev = ExtensionValues {
                    audio_level: Some(level),
                    voice_activity: Some(voice_activity),
                    ..Default::default()
                };

                let mut buf = vec![0_u8; 8];
                exts.write_to(&mut buf[..], &ev, ExtensionsForm::OneByte);

                let mut ev2 = ExtensionValues::default();
                exts.parse(&buf, ExtensionsForm::OneByte, &mut ev2);

                assert_eq!(ev2.audio_level, Some(level));
                assert_eq!(ev2.voice_activity, Some(voice_activity));
            }
        }
    }
}
