//! The little DER the verifier reads and writes itself: walking
//! tag-length-value triples (CRL times, OCSP responses) and encoding them
//! (OCSP requests). Certificates are parsed by x509-parser and webpki; this
//! covers the structures those crates do not expose.

use std::time::Duration;

use rustls::pki_types::UnixTime;

/// Universal tag: BOOLEAN.
pub(crate) const BOOLEAN: u8 = 0x01;
/// Universal tag: INTEGER.
pub(crate) const INTEGER: u8 = 0x02;
/// Universal tag: BIT STRING.
pub(crate) const BIT_STRING: u8 = 0x03;
/// Universal tag: OCTET STRING.
pub(crate) const OCTET_STRING: u8 = 0x04;
/// Universal tag: NULL.
pub(crate) const NULL: u8 = 0x05;
/// Universal tag: OBJECT IDENTIFIER.
pub(crate) const OID: u8 = 0x06;
/// Universal tag: ENUMERATED.
pub(crate) const ENUMERATED: u8 = 0x0a;
/// Universal tag: SEQUENCE (constructed).
pub(crate) const SEQUENCE: u8 = 0x30;
/// Universal tag: UTCTime.
pub(crate) const UTC_TIME: u8 = 0x17;
/// Universal tag: GeneralizedTime.
pub(crate) const GENERALIZED_TIME: u8 = 0x18;

/// The tag of context-specific `[n]`, constructed (EXPLICIT tagging).
pub(crate) const fn explicit(n: u8) -> u8 {
    0xa0 | n
}

/// The tag of context-specific `[n]`, primitive (IMPLICIT of a primitive).
pub(crate) const fn implicit(n: u8) -> u8 {
    0x80 | n
}

/// Splits one DER tag-length-value off the front: `(tag, value, rest)`.
pub(crate) fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
    let (&tag, rest) = input.split_first().ok_or("truncated")?;
    let (&first, mut rest) = rest.split_first().ok_or("truncated")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("unsupported length encoding");
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err("truncated");
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// Splits off one element that must have tag `want`: `(value, rest)`.
pub(crate) fn expect<'a>(
    input: &'a [u8],
    want: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), &'static str> {
    match tlv(input) {
        Ok((tag, value, rest)) if tag == want => Ok((value, rest)),
        Ok(_) => Err(what),
        Err(e) => Err(e),
    }
}

/// Splits off one element with tag `want` if the input starts with one.
pub(crate) fn optional(input: &[u8], want: u8) -> Result<(Option<&[u8]>, &[u8]), &'static str> {
    match input.first() {
        Some(&tag) if tag == want => {
            let (_, value, rest) = tlv(input)?;
            Ok((Some(value), rest))
        }
        _ => Ok((None, input)),
    }
}

/// The whole encoding (tag and length included) of the first element, and
/// the rest: for signed data, whose signature covers the encoding.
pub(crate) fn raw_element(input: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let (_, _, rest) = tlv(input)?;
    Ok((&input[..input.len() - rest.len()], rest))
}

/// Encodes one element.
pub(crate) fn encode(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

/// Encodes a SEQUENCE of already encoded elements.
pub(crate) fn sequence(elements: &[&[u8]]) -> Vec<u8> {
    encode(SEQUENCE, &elements.concat())
}

/// A DER UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), the only forms RFC 5280 allows.
pub(crate) fn time_value(tag: u8, value: &[u8]) -> Result<UnixTime, &'static str> {
    let text = std::str::from_utf8(value).map_err(|_| "time is not ASCII")?;
    let digits = text.strip_suffix('Z').ok_or("time is not UTC ('Z')")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("time has non-digits");
    }
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy: i32 = digits[..2].parse().map_err(|_| "bad year")?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits[..4].parse().map_err(|_| "bad year")?, &digits[4..]),
        (UTC_TIME | GENERALIZED_TIME, _) => return Err("time has the wrong length"),
        _ => return Err("not a time"),
    };
    let field = |i: usize| rest[i..i + 2].parse::<u8>().map_err(|_| "bad time field");
    let month = time::Month::try_from(field(0)?).map_err(|_| "bad month")?;
    let date = time::Date::from_calendar_date(year, month, field(2)?).map_err(|_| "bad date")?;
    let at = date
        .with_hms(field(4)?, field(6)?, field(8)?)
        .map_err(|_| "bad time of day")?
        .assume_utc()
        .unix_timestamp();
    let secs = u64::try_from(at).map_err(|_| "time before 1970")?;
    Ok(UnixTime::since_unix_epoch(Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_walk_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let value = vec![0x5a; len];
            let der = encode(OCTET_STRING, &value);
            let (tag, got, rest) = tlv(&der).unwrap();
            assert_eq!((tag, got, rest), (OCTET_STRING, value.as_slice(), &[][..]));
        }
        let seq = sequence(&[&encode(INTEGER, &[7]), &encode(NULL, &[])]);
        let (inner, rest) = expect(&seq, SEQUENCE, "not a sequence").unwrap();
        assert!(rest.is_empty());
        let (raw, after) = raw_element(inner).unwrap();
        assert_eq!(raw, [INTEGER, 1, 7]);
        assert_eq!(optional(after, INTEGER).unwrap(), (None, after));
        assert_eq!(optional(after, NULL).unwrap(), (Some(&[][..]), &[][..]));
        assert_eq!(expect(after, INTEGER, "want INTEGER"), Err("want INTEGER"));
        assert_eq!(tlv(&[SEQUENCE, 5, 1]), Err("truncated"));
    }
}
