//! Parloir patch 82: the bytes a rate carries in a time, without libm.

use std::time::Duration;

use crate::rtp_::{Bitrate, DataSize};

/// `rate * time` as `Bitrate`'s `Mul<Duration>` computes it (bits in the time, over eight,
/// rounded half away from zero), with the rounding done by a truncating conversion and a
/// comparison instead of a call of libm's `round` (about 20 instructions on x86-64 without
/// SSE4.1, where `round` has no instruction of its own). The pacer caps its media and
/// padding debts with this at every packet sent and pays them at each of its timeouts; the
/// ALR detector fills its budget with it at every packet sent.
pub(crate) fn bytes_at(rate: Bitrate, time: Duration) -> DataSize {
    let bits = rate.as_f64() * time.as_secs_f64();
    DataSize::bytes(round_half_away(bits / 8.0))
}

/// `x.round() as i64`: truncated toward zero (saturating, NaN to zero, as `as` does), then
/// one step away from zero when the part cut off is half or more. Below 2^52 the cut-off
/// part is exact; from there on every `f64` is an integer and nothing is cut off.
fn round_half_away(x: f64) -> i64 {
    let whole = x as i64;
    let cut = x - whole as f64;
    if cut >= 0.5 {
        whole.saturating_add(1)
    } else if cut <= -0.5 {
        whole.saturating_sub(1)
    } else {
        whole
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn rounds_as_round_does() {
        let below_half = 0.5 - f64::EPSILON / 4.0;
        let mut values = vec![
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            below_half,
            1.0 + below_half,
            4_503_599_627_370_495.5,
            4_503_599_627_370_496.0,
            9_007_199_254_740_993.0,
            9.3e18,
            9.3e25,
            f64::MAX,
            f64::INFINITY,
            f64::NAN,
            f64::MIN_POSITIVE,
        ];
        values.extend(values.clone().iter().map(|v| -v));
        // Every quarter from -1000 to 1000, and some spread far.
        values.extend((-4000..=4000).map(|q| q as f64 / 4.0));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(f64::from_bits(x));
            values.push((x % 10_000_000) as f64 / 7.0);
        }
        for v in values {
            assert_eq!(round_half_away(v), v.round() as i64, "{v:e}");
        }
    }

    #[test]
    fn the_bytes_are_the_product() {
        let rates = [
            0,
            1,
            999,
            30_000,
            1_000_000,
            2_500_000,
            12_600_000,
            10_000_000_000,
        ];
        let mut times: Vec<Duration> = [0, 1, 999, 1_000, 333_333, 5_000_000, 500_000_000]
            .into_iter()
            .map(Duration::from_nanos)
            .collect();
        times.push(Duration::from_secs(3600));
        let mut x: u64 = 12345;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            times.push(Duration::from_nanos(x >> 34));
        }
        for bps in rates {
            let rate = Bitrate::bps(bps);
            for &time in &times {
                assert_eq!(
                    bytes_at(rate, time),
                    rate * time,
                    "{bps} bit/s for {time:?}"
                );
            }
        }
        let odd = Bitrate::from(1_234_567.891);
        for &time in &times {
            assert_eq!(bytes_at(odd, time), odd * time, "{odd} for {time:?}");
        }
    }
}
