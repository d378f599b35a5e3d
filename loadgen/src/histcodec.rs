//! The full latency histogram as text: HdrHistogram's V2 compressed encoding
//! in base64 — the same string an HdrHistogram interval log line carries — so
//! runs can be merged and re-plotted by any HdrHistogram tool.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

use crate::error::{Error, Result};

pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail for a well-formed histogram.
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing into memory");
    STANDARD.encode(bytes)
}

pub fn decode(s: &str) -> Result<Histogram<u64>> {
    let bytes = STANDARD
        .decode(s.trim())
        .map_err(|e| Error::new(format!("histogram is not base64: {e}")))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| Error::new(format!("histogram is not HdrHistogram V2: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut h = crate::stats::new_histogram();
        for v in [1u64, 50, 999, 123_456, 3_000_000] {
            h.record(v).unwrap();
        }
        let s = encode(&h);
        assert!(s.starts_with("HISTFAAA"), "{s}");
        let back = decode(&s).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert!(decode("not base64!").is_err());
        assert!(decode("AAAA").is_err());
    }
}
