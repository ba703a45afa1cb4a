use super::*;
use crate::noise::Noise;

const INSERT: &[u8] = b"Client-Cert: :AAEC:\r\n";

fn rewriter() -> HeadRewriter {
    HeadRewriter::new(
        &["Client-Cert".to_string(), "Client-Cert-Chain".to_string()],
        INSERT.to_vec(),
        DEFAULT_MAX_HEAD,
    )
}

fn whole(input: &[u8]) -> Result<Vec<u8>, Rejection> {
    let mut out = Vec::new();
    rewriter().feed(input, &mut out).map(|()| out)
}

/// Pipelined requests covering every framing, and what the backend gets.
fn pipelined() -> (Vec<u8>, Vec<u8>) {
    let input = [
        &b"GET /a HTTP/1.1\r\nHost: x\r\nclient-cert: :c3Bvb2Y=:\r\n\r\n"[..],
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nCLIENT-CERT-CHAIN: :x:\r\n\r\n",
        b"hello\r\n\r\nxy",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"5;name=\"v\"\r\nab\r\nc\r\n0\r\nX-Trailer: 1\r\nClient-Cert: t\r\n\r\n",
        b"\r\nGET /d HTTP/1.0\r\n\r\n",
    ]
    .concat();
    let expected = [
        &b"GET /a HTTP/1.1\r\nHost: x\r\nClient-Cert: :AAEC:\r\n\r\n"[..],
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nClient-Cert: :AAEC:\r\n\r\n",
        b"hello\r\n\r\nxy",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nClient-Cert: :AAEC:\r\n\r\n",
        // Chunk data, extensions and trailers pass untouched.
        b"5;name=\"v\"\r\nab\r\nc\r\n0\r\nX-Trailer: 1\r\nClient-Cert: t\r\n\r\n",
        b"GET /d HTTP/1.0\r\nClient-Cert: :AAEC:\r\n\r\n",
    ]
    .concat();
    (input, expected)
}

#[test]
fn strips_spoofed_headers_and_inserts_ours_in_every_head() {
    let (input, expected) = pipelined();
    assert_eq!(
        String::from_utf8_lossy(&whole(&input).unwrap()),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn split_at_every_offset_gives_the_same_bytes() {
    let (input, expected) = pipelined();
    for cut in 0..=input.len() {
        let mut rw = rewriter();
        let mut out = Vec::new();
        rw.feed(&input[..cut], &mut out).unwrap();
        rw.feed(&input[cut..], &mut out).unwrap();
        assert_eq!(out, expected, "split at {cut}");
    }
    let mut rw = rewriter();
    let mut out = Vec::new();
    for b in &input {
        rw.feed(std::slice::from_ref(b), &mut out).unwrap();
    }
    assert_eq!(out, expected, "byte by byte");
}

#[test]
fn verbatim_bytes_can_bypass_the_rewriter() {
    // The kernel path splices what `verbatim` allows and feeds the rest:
    // the backend must get the same bytes as if everything were fed.
    let (input, expected) = pipelined();
    for max_piece in [1, 3, 7, 64, 4096] {
        let mut rw = rewriter();
        let mut out = Vec::new();
        let mut rest = &input[..];
        let mut skipped = 0;
        while !rest.is_empty() {
            let v = rw.verbatim().min(rest.len() as u64) as usize;
            let n = if v > 0 {
                v.min(max_piece)
            } else {
                rest.len().min(max_piece)
            };
            if v > 0 {
                out.extend_from_slice(&rest[..n]);
                rw.skip(n as u64);
                skipped += n;
            } else {
                rw.feed(&rest[..n], &mut out).unwrap();
            }
            rest = &rest[n..];
        }
        assert_eq!(out, expected, "pieces of at most {max_piece}");
        if max_piece == 1 {
            // Fed one byte at a time, every body byte was offered for skipping.
            assert_eq!(skipped, 11 + 5, "both bodies' data bytes");
        }
    }
    let mut rw = rewriter();
    let mut out = Vec::new();
    rw.feed(
        b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
        &mut out,
    )
    .unwrap();
    assert_eq!(rw.verbatim(), u64::MAX);
    rw.skip(1 << 40);
    assert_eq!(rw.verbatim(), u64::MAX);
}

#[test]
fn ambiguous_framing_is_refused() {
    for (input, why) in [
        (
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            "both",
        ),
        (b"POST / HTTP/1.1\r\nContent-Length: 3x\r\n\r\n", "invalid"),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "invalid"),
        (b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", "invalid"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "conflicting",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
            "invalid",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "single chunked",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "single chunked",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "chunk size",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab",
            "CRLF",
        ),
    ] {
        let e = whole(input).unwrap_err();
        assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(input));
        assert!(
            e.reason.contains(why),
            "{e} for {:?}",
            String::from_utf8_lossy(input)
        );
    }
    // Equal repeated lengths are one length.
    let out = whole(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab").unwrap();
    assert!(out.ends_with(b"\r\n\r\nab"));
}

#[test]
fn malformed_heads_are_refused() {
    for input in [
        &b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nA : b\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
        b"GET / HTTP/1.1\nA: b\n\n",
        b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET /  HTTP/1.1\r\n\r\n",
        b"GET\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello\r\n\r\n",
    ] {
        let e = whole(input).unwrap_err();
        assert_eq!(e.status, 400, "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn refusal_sticks_and_answers_with_a_complete_response() {
    let mut rw = rewriter();
    let mut out = Vec::new();
    let e = rw.feed(b"BAD\r\n\r\n", &mut out).unwrap_err();
    assert!(out.is_empty());
    assert!(rw.feed(b"GET / HTTP/1.1\r\n\r\n", &mut out).is_err());
    let resp = String::from_utf8(e.response()).unwrap();
    assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp}");
    assert!(resp.contains("Connection: close\r\n"));
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("Content-Length: {}", body.len())));
}

#[test]
fn oversized_head_gets_431_even_when_it_arrives_slowly() {
    let mut rw = HeadRewriter::new(&[], Vec::new(), 64);
    let mut out = Vec::new();
    rw.feed(b"GET / HTTP/1.1\r\n", &mut out).unwrap();
    let mut result = Ok(());
    for _ in 0..10 {
        result = rw.feed(b"X-Filler: 0123456789\r\n", &mut out);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result.unwrap_err().status, 431);
    assert!(out.is_empty());
    // A head of exactly the limit passes.
    let head = b"GET / HTTP/1.1\r\nX: 01234567890123456789012345678901234567890\r\n\r\n";
    assert_eq!(head.len(), 64);
    let mut rw = HeadRewriter::new(&[], Vec::new(), 64);
    rw.feed(head, &mut out).unwrap();
    assert_eq!(out, head);
}

#[test]
fn connect_and_upgrade_pass_the_rest_through() {
    for head in [
        &b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"[..],
        b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ] {
        let later = b"GET / HTTP/1.1\r\nClient-Cert: spoof\r\n\r\n\x00\xff";
        let out = whole(&[head, &later[..]].concat()).unwrap();
        assert!(out.ends_with(later), "{:?}", String::from_utf8_lossy(&out));
        assert!(find(&out, INSERT).is_some());
    }
    // `Connection: upgrade` without an Upgrade header is an ordinary request.
    let out = whole(
        b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\nGET / HTTP/1.1\r\nClient-Cert: s\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        out.windows(INSERT.len()).filter(|w| *w == INSERT).count(),
        2
    );
    assert!(find(&out, b"Client-Cert: s").is_none());
}

#[test]
fn mutated_input_never_panics_and_splits_never_change_the_result() {
    let (base, _) = pipelined();
    let alphabet = b"\r\n:; \t0123456789abcdefABCDEF,-\x00\x7fGETPOSTchunkedContent-Length";
    for seed in 1..=3000u64 {
        let mut rng = Noise(seed);
        let mut input = base.clone();
        for _ in 0..=rng.below(6) {
            let at = rng.below(input.len());
            match rng.below(3) {
                0 => input[at] = alphabet[rng.below(alphabet.len())],
                1 => input.insert(at, alphabet[rng.below(alphabet.len())]),
                _ => {
                    input.remove(at);
                }
            }
        }
        let once = whole(&input);
        let mut rw = rewriter();
        let mut out = Vec::new();
        let mut rest = &input[..];
        let mut pieces = Ok(());
        while !rest.is_empty() && pieces.is_ok() {
            let n = 1 + rng.below(rest.len().min(40));
            pieces = rw.feed(&rest[..n], &mut out);
            rest = &rest[n..];
        }
        assert_eq!(once.is_ok(), pieces.is_ok(), "seed {seed}");
        if let Ok(once) = once {
            assert_eq!(once, out, "seed {seed}");
        }
    }
}
