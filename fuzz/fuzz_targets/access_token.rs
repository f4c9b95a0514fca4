//! An access token as a client presents it (query `access_token` or `Authorization: Bearer`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use parloir_signal::KeyRing;

fuzz_target!(|data: &[u8]| {
    let keys = KeyRing::new([("devkey".into(), "secret".into())]);
    let _ = keys.verify(&String::from_utf8_lossy(data), 1_700_000_000);
});
