//! Timestamps as the API writes them: RFC 3339 in UTC with a `Z`, and as many
//! fractional digits as the value needs (none, 3, 6 or 9), which is chrono's own
//! format. Written here in one pass into a stack buffer: chrono's `Serialize` hands
//! serde_json one character at a time, and on a deployment of a thousand hosts that
//! was a quarter of the CPU of a `GET`.
//!
//! Fields use it with `#[serde(serialize_with = "crate::timestamp::serialize")]`, or
//! `crate::timestamp::optional::serialize` for an `Option`. Reading stays chrono's.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::Serializer;

pub(crate) fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; LONGEST];
    match format(at, &mut buffer) {
        Some(text) => serializer.serialize_str(text),
        None => serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

pub(crate) mod optional {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => super::serialize(at, serializer),
            None => serializer.serialize_none(),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`
const LONGEST: usize = 30;

/// The text of `at`, or None for what the short path does not write: a year outside
/// 0 to 9999 (written with a sign) or a leap second.
fn format<'b>(at: &DateTime<Utc>, buffer: &'b mut [u8; LONGEST]) -> Option<&'b str> {
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    digits(&mut buffer[0..4], year);
    buffer[4] = b'-';
    digits(&mut buffer[5..7], at.month());
    buffer[7] = b'-';
    digits(&mut buffer[8..10], at.day());
    buffer[10] = b'T';
    digits(&mut buffer[11..13], at.hour());
    buffer[13] = b':';
    digits(&mut buffer[14..16], at.minute());
    buffer[16] = b':';
    digits(&mut buffer[17..19], at.second());
    let mut end = 19;
    let (fraction, width) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if width > 0 {
        buffer[end] = b'.';
        digits(&mut buffer[end + 1..end + 1 + width], fraction);
        end += 1 + width;
    }
    buffer[end] = b'Z';
    std::str::from_utf8(&buffer[..=end]).ok()
}

/// `value` in decimal, zero-padded to fill `out`.
fn digits(out: &mut [u8], mut value: u32) {
    for byte in out.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn written(at: &DateTime<Utc>) -> String {
        let mut out = Vec::new();
        serialize(at, &mut serde_json::Serializer::new(&mut out)).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_chrono_writes_for_every_precision_and_edge() {
        let base = Utc.with_ymd_and_hms(2026, 12, 1, 4, 5, 6).unwrap();
        let mut cases = vec![
            base,
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 6, 15, 12, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
        ];
        for nanos in [1, 999, 1_000, 120_000, 999_999, 1_000_000, 5_000_000, 123_456_789, 999_999_999] {
            cases.push(base + chrono::Duration::nanoseconds(nanos));
        }
        // A leap second, which chrono keeps as nanoseconds past a billion.
        cases.push(base.with_nanosecond(1_500_000_000).unwrap());
        for at in cases {
            let chrono = serde_json::to_string(&at).unwrap();
            assert_eq!(written(&at), chrono, "for {at:?}");
        }
    }

    #[test]
    fn an_absent_timestamp_is_null() {
        let mut out = Vec::new();
        optional::serialize(&None, &mut serde_json::Serializer::new(&mut out)).unwrap();
        assert_eq!(out, b"null");
    }
}
