//! The join parameters of both signalling paths: `join_request` of `/rtc/v1` (base64url, maybe
//! gzipped, `WrappedJoinRequest`) and the query string of `/rtc`.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use parloir_signal::JoinParams;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = JoinParams::from_v1_join_request(&text);

    let query: HashMap<String, String> = text
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect();
    let _ = JoinParams::from_v0_query(&query);
});
