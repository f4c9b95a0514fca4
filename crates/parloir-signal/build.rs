//! Compiles the vendored LiveKit `.proto` files into a descriptor set for the protobuf-JSON
//! mapping (Twirp JSON bodies, webhook payloads). Pure Rust: no `protoc` needed.

use std::path::PathBuf;

use prost::Message as _;

fn main() {
    let files = [
        "livekit_room.proto",
        "livekit_webhook.proto",
        "livekit_egress.proto",
    ];
    for f in std::fs::read_dir("proto")
        .expect("the proto directory")
        .flatten()
    {
        println!("cargo:rerun-if-changed={}", f.path().display());
    }
    println!("cargo:rerun-if-changed=proto/logger/options.proto");
    let set = protox::compile(files, ["proto"]).expect("the vendored LiveKit protos compile");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("livekit.fds"), set.encode_to_vec()).expect("OUT_DIR is writable");
}
