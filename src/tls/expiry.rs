//! The expiry (`notAfter`) of an X.509 certificate, read from its DER bytes by a small walk
//! of exactly the fields on the way (RFC 5280 §4.1):
//!
//! ```text
//! Certificate    ::= SEQUENCE { tbsCertificate TBSCertificate, signatureAlgorithm, signature }
//! TBSCertificate ::= SEQUENCE { version [0] EXPLICIT DEFAULT v1, serialNumber INTEGER,
//!                               signature AlgorithmIdentifier, issuer Name, validity Validity, ... }
//! Validity       ::= SEQUENCE { notBefore Time, notAfter Time }
//! Time           ::= CHOICE { utcTime UTCTime, generalTime GeneralizedTime }
//! ```
//!
//! The bytes come from operators' files, so every length is checked against what is left
//! and nothing here can panic or overflow (`fuzz/fuzz_targets/cert_expiry.rs`). Only the
//! path to `notAfter` is read: the signature and the rest of the certificate are rustls's
//! business when the pair is loaded. Times are the forms RFC 5280 allows (`YYMMDDHHMMSSZ`,
//! years 1950-2049, and `YYYYMMDDHHMMSSZ`), plus fractional seconds in a GeneralizedTime,
//! which older issuers wrote (ignored).

use std::fmt;

/// Why the expiry could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryError(&'static str);

impl fmt::Display for ExpiryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a readable X.509 certificate: {}", self.0)
    }
}

impl std::error::Error for ExpiryError {}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The certificate's `notAfter`, in Unix seconds. The input must be exactly one
/// certificate (no trailing bytes).
pub fn not_after(der: &[u8]) -> Result<i64, ExpiryError> {
    let (cert, rest) = element(der, SEQUENCE, "certificate")?;
    if !rest.is_empty() {
        return Err(ExpiryError("bytes after the certificate"));
    }
    let (mut tbs, _) = element(cert, SEQUENCE, "tbsCertificate")?;
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs, VERSION, "version")?.1;
    }
    tbs = element(tbs, INTEGER, "serialNumber")?.1;
    tbs = element(tbs, SEQUENCE, "signature algorithm")?.1;
    tbs = element(tbs, SEQUENCE, "issuer")?.1;
    let (validity, _) = element(tbs, SEQUENCE, "validity")?;
    let (_, validity) = time(validity, "notBefore")?;
    let (after, rest) = time(validity, "notAfter")?;
    if !rest.is_empty() {
        return Err(ExpiryError("bytes after notAfter in validity"));
    }
    Ok(after)
}

/// One TLV of tag `tag`: its contents and what follows it.
fn element<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), ExpiryError> {
    let (&t, rest) = input.split_first().ok_or(ExpiryError(what))?;
    if t != tag {
        return Err(ExpiryError(what));
    }
    let (&first, mut rest) = rest.split_first().ok_or(ExpiryError(what))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        // Long form: 1 to 4 length bytes (a certificate is far below 4 GiB); 0x80 is BER's
        // indefinite length, which DER forbids.
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(ExpiryError(what));
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return Err(ExpiryError(what));
    }
    Ok(rest.split_at(len))
}

/// A `Time` (UTCTime or GeneralizedTime) in Unix seconds, and what follows it.
fn time<'a>(input: &'a [u8], what: &'static str) -> Result<(i64, &'a [u8]), ExpiryError> {
    let (value, rest) = match input.first() {
        Some(&UTC_TIME) => {
            let (v, rest) = element(input, UTC_TIME, what)?;
            (utc_time(v).ok_or(ExpiryError(what))?, rest)
        }
        Some(&GENERALIZED_TIME) => {
            let (v, rest) = element(input, GENERALIZED_TIME, what)?;
            (generalized_time(v).ok_or(ExpiryError(what))?, rest)
        }
        _ => return Err(ExpiryError(what)),
    };
    Ok((value, rest))
}

/// `YYMMDDHHMMSSZ`: RFC 5280 §4.1.2.5.1, YY >= 50 is 19YY, else 20YY.
fn utc_time(v: &[u8]) -> Option<i64> {
    if v.len() != 13 || v[12] != b'Z' {
        return None;
    }
    let yy = digits(&v[0..2])?;
    let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
    timestamp(year, &v[2..12])
}

/// `YYYYMMDDHHMMSSZ`, optionally `YYYYMMDDHHMMSS.fffZ` (fraction ignored).
fn generalized_time(v: &[u8]) -> Option<i64> {
    let (&z, body) = v.split_last()?;
    if z != b'Z' || body.len() < 14 {
        return None;
    }
    let (main, fraction) = body.split_at(14);
    if let Some((&dot, frac)) = fraction.split_first() {
        if dot != b'.' || frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
    }
    let year = digits(&main[0..4])?;
    timestamp(year, &main[4..14])
}

/// `MMDDHHMMSS` of `year` as Unix seconds, every field range-checked.
fn timestamp(year: i64, v: &[u8]) -> Option<i64> {
    let month = digits(v.get(0..2)?)?;
    let day = digits(v.get(2..4)?)?;
    let hour = digits(v.get(4..6)?)?;
    let minute = digits(v.get(6..8)?)?;
    let second = digits(v.get(8..10)?)?;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// ASCII digits as a number (at most 4 here, so no overflow).
fn digits(v: &[u8]) -> Option<i64> {
    v.iter().try_fold(0i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use time::OffsetDateTime;

    /// A self-signed certificate valid until `not_after` (Unix seconds).
    fn cert_until(not_after: i64) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_before = OffsetDateTime::from_unix_timestamp(946_684_800).unwrap();
        params.not_after = OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_times_of_real_certificates() {
        for t in [
            0,               // 1970-01-01, UTCTime
            951_782_400,     // 2000-02-29, a leap day
            1_767_225_599,   // 2025-12-31T23:59:59Z
            2_524_607_999,   // 2049-12-31T23:59:59Z, the last UTCTime
            2_524_608_000,   // 2050-01-01: GeneralizedTime from here on
            4_102_444_800,   // 2100-01-01 (not a leap year)
            253_402_300_799, // 9999-12-31T23:59:59Z, RFC 5280's "no expiry"
        ] {
            let der = cert_until(t);
            assert_eq!(not_after(&der), Ok(t), "notAfter {t}");
        }
    }

    #[test]
    fn v1_certificates_without_a_version_field_are_read() {
        // Hand-built: TBS with no [0] version, serial 1, empty algorithm/issuer sequences.
        let validity = [
            &[0x30, 30][..],
            &[0x17, 13],
            b"700101000000Z",
            &[0x17, 13],
            b"491231235959Z",
        ]
        .concat();
        let tbs_body = [&[0x02, 1, 1, 0x30, 0, 0x30, 0][..], &validity].concat();
        let tbs = [&[0x30, tbs_body.len() as u8][..], &tbs_body].concat();
        let body = [&tbs[..], &[0x30, 0, 0x03, 1, 0]].concat();
        let cert = [&[0x30, body.len() as u8][..], &body].concat();
        assert_eq!(not_after(&cert), Ok(2_524_607_999));
        // Every strict prefix is refused, and so are trailing bytes.
        for n in 0..cert.len() {
            assert!(not_after(&cert[..n]).is_err(), "prefix {n}");
        }
        assert!(not_after(&[&cert[..], &[0]].concat()).is_err());
    }

    #[test]
    fn times_are_checked_field_by_field() {
        assert_eq!(utc_time(b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(utc_time(b"500101000000Z"), Some(-631_152_000));
        assert_eq!(generalized_time(b"20500101000000Z"), Some(2_524_608_000));
        assert_eq!(
            generalized_time(b"20500101000000.123Z"),
            Some(2_524_608_000)
        );
        assert_eq!(generalized_time(b"20240229120000Z"), Some(1_709_208_000));
        for bad in [
            &b"491231235959"[..], // no Z
            b"4912312359Z",       // no seconds
            b"491301000000Z",     // month 13
            b"490230000000Z",     // February 30th
            b"490229000000Z",     // 2049 is not a leap year
            b"491231240000Z",     // hour 24
            b"491231236000Z",     // minute 60
            b"491231235960Z",     // second 60
            b"4912312359+9Z",     // not a digit
            b"491231235959+0100", // offsets are not allowed
        ] {
            assert_eq!(utc_time(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        for bad in [
            &b"2050010100000Z"[..],
            b"21000229000000Z", // 2100 is not a leap year
            b"20500101000000.Z",
            b"20500101000000,5Z",
            b"",
        ] {
            assert_eq!(
                generalized_time(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let der = cert_until(1_767_225_599);
        assert!(not_after(b"").is_err());
        assert!(not_after(b"-----BEGIN CERTIFICATE-----").is_err());
        // Indefinite and over-long lengths.
        assert!(not_after(&[0x30, 0x80, 0, 0]).is_err());
        assert!(not_after(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Every truncation and every single-byte corruption of a real certificate.
        for n in 0..der.len() {
            assert!(not_after(&der[..n]).is_err());
            let mut bad = der.clone();
            bad[n] ^= 0xff;
            let _ = not_after(&bad);
        }
    }

    #[test]
    fn days_match_the_time_crate() {
        for t in (-62_135_596_800i64..253_402_300_799).step_by(86_400 * 997 + 12_345) {
            let d = OffsetDateTime::from_unix_timestamp(t).unwrap();
            let secs = days_from_civil(
                i64::from(d.year()),
                i64::from(u8::from(d.month())),
                i64::from(d.day()),
            ) * 86_400
                + i64::from(d.hour()) * 3_600
                + i64::from(d.minute()) * 60
                + i64::from(d.second());
            assert_eq!(secs, t);
        }
    }
}
