//! One binary WebSocket frame from a client: decode, translate, and hand the command to an SFU
//! where session 1 has joined a room (`/rtc`, two peer connections).
#![no_main]

use libfuzzer_sys::fuzz_target;
use parloir_fuzz::{drain, joined};
use parloir_sfu::{Layout, SessionId};
use parloir_signal::session::{Action, translate};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = parloir_signal::decode_request(data) else {
        return;
    };
    let Action::Command(command) = translate(SessionId(1), message, 0) else {
        return;
    };
    let mut j = joined(Layout::TwoPeerConnections);
    j.sfu.handle_command(j.now, command);
    drain(&mut j.sfu);
});
