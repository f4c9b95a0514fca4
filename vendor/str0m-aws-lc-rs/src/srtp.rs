//! SRTP cipher implementations using AWS-LC-RS.

use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};

use str0m_proto::crypto::CryptoError;
use str0m_proto::crypto::{AeadAes128Gcm, AeadAes128GcmCipher, AeadAes256Gcm};
use str0m_proto::crypto::{AeadAes256GcmCipher, Aes128CmSha1_80Cipher};
use str0m_proto::crypto::{SrtpProvider, SupportedAeadAes128Gcm};
use str0m_proto::crypto::{SupportedAeadAes256Gcm, SupportedAes128CmSha1_80};

// ============================================================================
// AES-128-CM-SHA1-80 Cipher
// ============================================================================

struct AwsLcRsAes128CmSha1_80Cipher {
    // Parloir patch 2: the key expanded once, when the cipher is made; it was expanded again
    // for each packet.
    key: EncryptingKey,
}

impl std::fmt::Debug for AwsLcRsAes128CmSha1_80Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLcRsAes128CmSha1_80Cipher").finish()
    }
}

impl Aes128CmSha1_80Cipher for AwsLcRsAes128CmSha1_80Cipher {
    fn encrypt(
        &mut self,
        iv: &[u8; 16],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(), CryptoError> {
        // For CTR mode, we need the full 16-byte IV as the counter
        let context = EncryptionContext::Iv128(
            aws_lc_rs::iv::FixedLength::try_from(iv.as_ref()).expect("16-byte IV"),
        );

        // Copy input to output buffer for in-place encryption
        output[..input.len()].copy_from_slice(input);

        self.key
            .less_safe_encrypt(&mut output[..input.len()], context)
            .map_err(|e| CryptoError::Other(format!("AES-CTR encrypt failed: {}", e)))?;

        Ok(())
    }

    fn decrypt(
        &mut self,
        iv: &[u8; 16],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(), CryptoError> {
        // AES-CTR mode is symmetric, so we can use the same operation
        self.encrypt(iv, input, output)
    }
}

// ============================================================================
// AEAD-AES-128-GCM and AEAD-AES-256-GCM Ciphers
// ============================================================================

/// Parloir patch 1: an AES-GCM key whose cipher state (the expanded AES key and the GHASH
/// table, 584 bytes) lives in this object, which the SRTP context holds in a `Box`. With
/// aws-lc-rs's `LessSafeKey` the state was a second allocation behind a pointer in the boxed
/// cipher: sealing a packet for a connection not touched since its last packet started with
/// two dependent cache misses, now one. Sealing reads the plaintext and writes the ciphertext
/// to the output (aws-lc's `EVP_AEAD_CTX_seal_scatter`), without first copying the plaintext
/// there.
struct AwsLcGcmCipher {
    ctx: aws_lc_sys::EVP_AEAD_CTX,
}

// SAFETY: the context is written only by `EVP_AEAD_CTX_init` and `EVP_AEAD_CTX_cleanup`, through
// `&mut self` or an owned `Box`; sealing and opening read it (`*const EVP_AEAD_CTX`) and keep
// their working state on the stack. It holds no pointer into thread-local or shared mutable
// state (the `aead` field points to a static table of functions).
unsafe impl Send for AwsLcGcmCipher {}
unsafe impl Sync for AwsLcGcmCipher {}

impl std::fmt::Debug for AwsLcGcmCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLcGcmCipher").finish()
    }
}

impl AwsLcGcmCipher {
    /// A cipher for an AES-GCM key of 16 or 32 bytes, with 16-byte tags.
    fn new(key: &[u8]) -> Box<Self> {
        // SAFETY: `CRYPTO_library_init` may be called any number of times, from any thread;
        // `EVP_aead_aes_*_gcm` return pointers to static tables.
        let aead = unsafe {
            aws_lc_sys::CRYPTO_library_init();
            match key.len() {
                16 => aws_lc_sys::EVP_aead_aes_128_gcm(),
                32 => aws_lc_sys::EVP_aead_aes_256_gcm(),
                n => panic!("AES-GCM key of {n} bytes"),
            }
        };
        // SAFETY: an all-zero `EVP_AEAD_CTX` is the state `EVP_AEAD_CTX_zero` gives: plain
        // data, no pointer followed before `EVP_AEAD_CTX_init` sets it.
        let mut cipher = Box::new(AwsLcGcmCipher {
            ctx: unsafe { std::mem::zeroed() },
        });
        // SAFETY: the context is initialised where it stays (in the box; the box moves, its
        // contents do not), with a key of the length the AEAD takes, and no engine.
        let ok = unsafe {
            aws_lc_sys::EVP_AEAD_CTX_init(
                &mut cipher.ctx,
                aead,
                key.as_ptr(),
                key.len(),
                GCM_TAG_LEN,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(ok, 1, "AES-GCM key set-up failed");
        cipher
    }

    fn seal(
        &self,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(), CryptoError> {
        assert!(
            aad.len() >= 12,
            "Associated data length MUST be at least 12 octets"
        );
        let len = input.len();
        if output.len() < len + GCM_TAG_LEN {
            return Err(CryptoError::Other(format!(
                "AES-GCM encrypt: {} bytes of output for {len} of input",
                output.len()
            )));
        }
        let (body, tag) = output.split_at_mut(len);
        let mut tag_len = 0;
        // SAFETY: every pointer comes with the length of the slice it points into; `body` and
        // `tag` are disjoint parts of `output`, which `&mut` keeps apart from `input` and `aad`.
        let ok = unsafe {
            aws_lc_sys::EVP_AEAD_CTX_seal_scatter(
                &self.ctx,
                body.as_mut_ptr(),
                tag.as_mut_ptr(),
                &mut tag_len,
                GCM_TAG_LEN,
                iv.as_ptr(),
                iv.len(),
                input.as_ptr(),
                len,
                std::ptr::null(),
                0,
                aad.as_ptr(),
                aad.len(),
            )
        };
        if ok != 1 || tag_len != GCM_TAG_LEN {
            return Err(CryptoError::Other("AES-GCM encrypt failed".into()));
        }
        Ok(())
    }

    fn open(
        &self,
        iv: &[u8; GCM_IV_LEN],
        aads: &[&[u8]],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, CryptoError> {
        // Caller contract: `SrtpContext::unprotect_rtp` and `unprotect_rtcp` guarantee
        // the input holds at least the auth tag. A shorter buffer is a bug in str0m,
        // not bad input, so fail fast rather than hiding it in an error.
        assert!(input.len() >= GCM_TAG_LEN);

        // Concatenate AAD slices if needed
        let aad_data: Vec<u8>;
        let aad = if aads.len() == 1 {
            aads[0]
        } else {
            aad_data = aads.concat();
            aad_data.as_slice()
        };

        let ct_len = input.len() - GCM_TAG_LEN;
        let (ciphertext, tag) = input.split_at(ct_len);
        let out = &mut output[..ct_len];
        // SAFETY: every pointer comes with the length of the slice it points into; `out` is
        // apart from the inputs (`&mut`).
        let ok = unsafe {
            aws_lc_sys::EVP_AEAD_CTX_open_gather(
                &self.ctx,
                out.as_mut_ptr(),
                iv.as_ptr(),
                iv.len(),
                ciphertext.as_ptr(),
                ct_len,
                tag.as_ptr(),
                tag.len(),
                aad.as_ptr(),
                aad.len(),
            )
        };
        if ok != 1 {
            // aws-lc's error queue holds why; it is cleared so that it does not grow with
            // each packet that fails (a forged or corrupt one).
            // SAFETY: clears this thread's error queue; no arguments.
            unsafe { aws_lc_sys::ERR_clear_error() };
            return Err(CryptoError::Other("AES-GCM decrypt failed".into()));
        }
        Ok(ct_len)
    }
}

impl Drop for AwsLcGcmCipher {
    fn drop(&mut self) {
        // SAFETY: the context was initialised in `new`; cleanup frees nothing for AES-GCM
        // and leaves it zeroed.
        unsafe { aws_lc_sys::EVP_AEAD_CTX_cleanup(&mut self.ctx) }
    }
}

const GCM_TAG_LEN: usize = AeadAes128Gcm::TAG_LEN;
const GCM_IV_LEN: usize = AeadAes128Gcm::IV_LEN;
const _: () = assert!(AeadAes256Gcm::TAG_LEN == GCM_TAG_LEN && AeadAes256Gcm::IV_LEN == GCM_IV_LEN);

impl AeadAes128GcmCipher for AwsLcGcmCipher {
    fn encrypt(
        &mut self,
        iv: &[u8; AeadAes128Gcm::IV_LEN],
        aad: &[u8],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.seal(iv, aad, input, output)
    }

    fn decrypt(
        &mut self,
        iv: &[u8; AeadAes128Gcm::IV_LEN],
        aads: &[&[u8]],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, CryptoError> {
        self.open(iv, aads, input, output)
    }
}

impl AeadAes256GcmCipher for AwsLcGcmCipher {
    fn encrypt(
        &mut self,
        iv: &[u8; AeadAes256Gcm::IV_LEN],
        aad: &[u8],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.seal(iv, aad, input, output)
    }

    fn decrypt(
        &mut self,
        iv: &[u8; AeadAes256Gcm::IV_LEN],
        aads: &[&[u8]],
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, CryptoError> {
        self.open(iv, aads, input, output)
    }
}

// ============================================================================
// SRTP Profile Support Implementations
// ============================================================================

struct AwsLcRsSupportedAes128CmSha1_80;

impl std::fmt::Debug for AwsLcRsSupportedAes128CmSha1_80 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLcRsSupportedAes128CmSha1_80").finish()
    }
}

impl SupportedAes128CmSha1_80 for AwsLcRsSupportedAes128CmSha1_80 {
    fn create_cipher(&self, key: [u8; 16], _encrypt: bool) -> Box<dyn Aes128CmSha1_80Cipher> {
        let unbound_key = UnboundCipherKey::new(&AES_128, &key).expect("valid key");
        let key = EncryptingKey::ctr(unbound_key).expect("CTR mode");
        Box::new(AwsLcRsAes128CmSha1_80Cipher { key })
    }
}

struct AwsLcRsSupportedAeadAes128Gcm;

impl std::fmt::Debug for AwsLcRsSupportedAeadAes128Gcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLcRsSupportedAeadAes128Gcm").finish()
    }
}

impl SupportedAeadAes128Gcm for AwsLcRsSupportedAeadAes128Gcm {
    fn create_cipher(&self, key: [u8; 16], _encrypt: bool) -> Box<dyn AeadAes128GcmCipher> {
        AwsLcGcmCipher::new(&key)
    }
}

struct AwsLcRsSupportedAeadAes256Gcm;

impl std::fmt::Debug for AwsLcRsSupportedAeadAes256Gcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLcRsSupportedAeadAes256Gcm").finish()
    }
}

impl SupportedAeadAes256Gcm for AwsLcRsSupportedAeadAes256Gcm {
    fn create_cipher(&self, key: [u8; 32], _encrypt: bool) -> Box<dyn AeadAes256GcmCipher> {
        AwsLcGcmCipher::new(&key)
    }
}

// ============================================================================
// SRTP Provider Implementation
// ============================================================================

pub(super) struct AwsLcRsSrtpProvider;

impl std::fmt::Debug for AwsLcRsSrtpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLcRsSrtpProvider").finish()
    }
}

impl SrtpProvider for AwsLcRsSrtpProvider {
    fn aes_128_cm_sha1_80(&self) -> &'static dyn SupportedAes128CmSha1_80 {
        &AwsLcRsSupportedAes128CmSha1_80
    }

    fn aead_aes_128_gcm(&self) -> &'static dyn SupportedAeadAes128Gcm {
        &AwsLcRsSupportedAeadAes128Gcm
    }

    fn aead_aes_256_gcm(&self) -> &'static dyn SupportedAeadAes256Gcm {
        &AwsLcRsSupportedAeadAes256Gcm
    }

    fn srtp_aes_128_ecb_round(&self, key: &[u8], input: &[u8], output: &mut [u8]) {
        use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};

        let unbound_key = UnboundCipherKey::new(&AES_128, key).expect("valid key");
        let encrypting_key = EncryptingKey::ecb(unbound_key).expect("ECB mode");

        // Copy input to output buffer for in-place encryption
        output[..input.len()].copy_from_slice(input);

        // ECB mode uses EncryptionContext::None
        let _decryption_context = encrypting_key
            .less_safe_encrypt(&mut output[..input.len()], EncryptionContext::None)
            .expect("AES-128-ECB encryption");

        // The less_safe_encrypt returns a DecryptionContext which includes the padding info
        // For ECB with PKCS7 padding, 16 bytes input becomes 32 bytes output
    }

    fn srtp_aes_256_ecb_round(&self, key: &[u8], input: &[u8], output: &mut [u8]) {
        use aws_lc_rs::cipher::{AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};

        let unbound_key = UnboundCipherKey::new(&AES_256, key).expect("valid key");
        let encrypting_key = EncryptingKey::ecb(unbound_key).expect("ECB mode");

        // Copy input to output buffer for in-place encryption
        output[..input.len()].copy_from_slice(input);

        // ECB mode uses EncryptionContext::None
        let _decryption_context = encrypting_key
            .less_safe_encrypt(&mut output[..input.len()], EncryptionContext::None)
            .expect("AES-256-ECB encryption");

        // The less_safe_encrypt returns a DecryptionContext which includes the padding info
        // For ECB with PKCS7 padding, 16 bytes input becomes 32 bytes output
    }
}

/// Parloir's tests of its patches (PARLOIR.md).
#[cfg(test)]
mod parloir_tests {
    use super::*;
    use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// What aws-lc-rs's `LessSafeKey` (the unpatched provider) gives: the sealed body and tag.
    fn reference_seal(key: &[u8], iv: &[u8; 12], aad: &[u8], input: &[u8]) -> Vec<u8> {
        let alg = if key.len() == 16 {
            &AES_128_GCM
        } else {
            &AES_256_GCM
        };
        let key = LessSafeKey::new(UnboundKey::new(alg, key).unwrap());
        let mut out = input.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(iv).unwrap();
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut out)
            .unwrap();
        out.extend_from_slice(tag.as_ref());
        out
    }

    fn cipher(key: &[u8]) -> Box<dyn AeadAes256GcmCipher> {
        AwsLcGcmCipher::new(key)
    }

    #[test]
    fn gcm_seals_and_opens_as_aws_lc_rs_does() {
        for key_len in [16, 32] {
            let key = bytes(7, key_len);
            let mut enc = cipher(&key);
            let mut dec = cipher(&key);
            for (n, len) in [0, 1, 15, 16, 17, 160, 1188].into_iter().enumerate() {
                let iv: [u8; 12] = bytes(n as u8, 12).try_into().unwrap();
                let aad = bytes(3 + n as u8, 12 + n * 4);
                let input = bytes(11 + n as u8, len);
                // An output full of another packet's bytes, longer than needed.
                let mut out = vec![0xa5; len + 16 + 9];
                enc.encrypt(&iv, &aad, &input, &mut out).unwrap();
                let want = reference_seal(&key, &iv, &aad, &input);
                assert_eq!(&out[..len + 16], &want[..], "key {key_len} B, {len} B");
                assert!(
                    out[len + 16..].iter().all(|b| *b == 0xa5),
                    "wrote past the tag"
                );

                let mut plain = vec![0; len];
                let got = dec.decrypt(&iv, &[&aad], &want, &mut plain).unwrap();
                assert_eq!(got, len);
                assert_eq!(plain, input);
                // The associated data in two parts (SRTCP's header and index).
                let got = dec
                    .decrypt(&iv, &[&aad[..8], &aad[8..]], &want, &mut plain)
                    .unwrap();
                assert_eq!((got, &plain), (len, &input));
            }
        }
    }

    #[test]
    fn a_changed_byte_fails_to_open_and_the_next_packet_opens() {
        let key = bytes(1, 32);
        let (mut enc, mut dec) = (cipher(&key), cipher(&key));
        let iv = [9; 12];
        let aad = bytes(2, 12);
        let input = bytes(4, 100);
        let mut sealed = vec![0; 116];
        enc.encrypt(&iv, &aad, &input, &mut sealed).unwrap();
        let mut plain = vec![0; 100];
        for at in [0, 50, 99, 100, 115] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(
                dec.decrypt(&iv, &[&aad], &bad, &mut plain).is_err(),
                "byte {at}"
            );
        }
        let mut bad_aad = aad.clone();
        bad_aad[5] ^= 0x80;
        assert!(dec.decrypt(&iv, &[&bad_aad], &sealed, &mut plain).is_err());
        assert!(dec.decrypt(&[8; 12], &[&aad], &sealed, &mut plain).is_err());
        assert_eq!(dec.decrypt(&iv, &[&aad], &sealed, &mut plain).unwrap(), 100);
        assert_eq!(plain, input);
        // aws-lc's error queue is left empty by the failures.
        // SAFETY: reads this thread's error queue.
        assert_eq!(unsafe { aws_lc_sys::ERR_peek_error() }, 0);
    }

    #[test]
    fn an_output_too_short_for_the_tag_is_an_error() {
        let mut enc = cipher(&[5; 16]);
        let mut out = vec![0; 100 + 15];
        assert!(
            enc.encrypt(&[0; 12], &[0; 12], &[1; 100], &mut out)
                .is_err()
        );
    }

    /// The point of patch 1: the key state is inside the boxed cipher (with `LessSafeKey` the
    /// box held a pointer to it).
    #[test]
    fn the_key_state_is_inside_the_boxed_cipher() {
        let p256 = AwsLcRsSupportedAeadAes256Gcm.create_cipher([3; 32], true);
        assert!(std::mem::size_of_val(&*p256) >= std::mem::size_of::<aws_lc_sys::EVP_AEAD_CTX>());
        let p128 = AwsLcRsSupportedAeadAes128Gcm.create_cipher([3; 16], true);
        assert!(std::mem::size_of_val(&*p128) >= std::mem::size_of::<aws_lc_sys::EVP_AEAD_CTX>());
    }

    /// Patch 2: the AES-CM key made once gives RFC 3711's keystream (appendix B.2), for each
    /// packet in turn.
    #[test]
    fn aes_cm_with_the_key_made_once_gives_the_rfc_3711_keystream() {
        let key: [u8; 16] = hex("2B7E151628AED2A6ABF7158809CF4F3C").try_into().unwrap();
        let iv: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000").try_into().unwrap();
        let want = hex(concat!(
            "E03EAD0935C95E80E166B16DD92B4EB4",
            "D23513162B02D0F72A43A2FE4A5F97AB",
            "41E95B3BB0A2E8DD477901E4FCA894C0"
        ));
        let mut c = AwsLcRsSupportedAes128CmSha1_80.create_cipher(key, true);
        for _ in 0..3 {
            let mut out = vec![0; 48 + 15];
            c.encrypt(&iv, &[0; 48], &mut out).unwrap();
            assert_eq!(&out[..48], &want[..]);
        }
        // And decrypting is the same operation.
        let mut back = vec![0; 48 + 15];
        c.decrypt(&iv, &want, &mut back).unwrap();
        assert_eq!(&back[..48], &[0; 48]);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
