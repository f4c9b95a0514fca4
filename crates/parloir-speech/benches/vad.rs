//! Silero VAD's cost per 32 ms step on one CPU thread, and its real-time factor (CPU time over
//! audio time): how many concurrent speakers one core can gate.
//!
//! `cargo bench -p parloir-speech --bench vad` (needs deploy/setup.sh's models/.venv).

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use parloir_speech::{Models, Vad, load_in};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::set_current_dir(&root).expect("the repository root");
    let runtime = load_in(Path::new("models")).expect("ONNX Runtime (deploy/setup.sh installs it)");
    let path = Models::open(Path::new("models"))
        .and_then(|m| m.path("silero-vad"))
        .expect("the Silero VAD model");
    let mut vad = Vad::new(&runtime, &path).expect("the model loads");
    // A 440 Hz tone with noise: the model's cost does not depend on the content.
    let chunk: [f32; 512] = std::array::from_fn(|i| {
        (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin() * 0.3
    });
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut group = c.benchmark_group("vad");
    // One element = one 32 ms step; criterion's throughput is steps per second, and
    // 31.25 steps per second is real time.
    group.throughput(Throughput::Elements(1));
    group.bench_function("silero-512", |b| {
        b.iter(|| vad.process(&chunk).expect("inference"))
    });
    group.finish();
    c.final_summary();
}
