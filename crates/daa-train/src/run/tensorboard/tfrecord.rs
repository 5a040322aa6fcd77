//! TFRecord framing, the container of TensorBoard event files: each record
//! is
//!
//! `u64 length (little-endian) · u32 masked_crc(length bytes) · data · u32 masked_crc(data)`,
//!
//! with `masked_crc(x) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2³²)`
//! where `c` is the CRC-32C (Castagnoli) of `x`.

/// `data` framed as one TFRecord.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's masked CRC-32C of `bytes`.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_the_published_values() {
        // CRC-32C check value (RFC 3720, B.4): "123456789" → 0xe3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // Masked by hand: 0xe3069283 rotated right by 15 is 0x2507c60d
        // (in 32 bits), plus 0xa282ead8 is 0xc78ab0e5 (mod 2³²).
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn a_frame_holds_length_checksums_and_data() {
        let framed = frame(b"abc");
        assert_eq!(framed.len(), 8 + 4 + 3 + 4);
        assert_eq!(u64::from_le_bytes(framed[..8].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(framed[8..12].try_into().unwrap()), masked_crc(&3u64.to_le_bytes()));
        assert_eq!(&framed[12..15], b"abc");
        assert_eq!(u32::from_le_bytes(framed[15..].try_into().unwrap()), masked_crc(b"abc"));
    }
}
