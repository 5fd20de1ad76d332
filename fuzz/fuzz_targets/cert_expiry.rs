//! The certificate expiry reader (`src/tls/expiry.rs`, `not_after`) on arbitrary bytes:
//! certificate files are operator input.
//!
//! Asserts: never a panic; an expiry read lies between year 0 and 9999; the input is then
//! exactly one certificate (a strict prefix, or one more byte, is refused); and the time
//! read converts back, by an independent inverse (civil date from days), to a UTCTime or
//! GeneralizedTime text that is in the input.
#![no_main]

use interlock::tls::expiry::not_after;
use libfuzzer_sys::fuzz_target;

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
const MIN: i64 = -62_167_219_200;
const MAX: i64 = 253_402_300_799;

/// Howard Hinnant's civil_from_days: (year, month, day) of a day count from 1970-01-01.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let Ok(t) = not_after(data) else {
        return;
    };
    assert!((MIN..=MAX).contains(&t), "{t}");
    assert!(not_after(&data[..data.len() - 1]).is_err());
    assert!(not_after(&data[..data.len() / 2]).is_err());
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(not_after(&longer).is_err());

    let (y, mo, d) = civil(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    let clock = format!(
        "{mo:02}{d:02}{:02}{:02}{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    );
    let utc = format!("{:02}{clock}Z", y % 100);
    let generalized = format!("{y:04}{clock}");
    assert!(
        ((1950..2050).contains(&y) && contains(data, utc.as_bytes()))
            || contains(data, generalized.as_bytes()),
        "{t}: neither {utc} nor {generalized}"
    );
});
