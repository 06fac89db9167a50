//! Webhook signatures: arbitrary secrets, `X-Nuki-Signature-SHA256` header and body through
//! `Verifier::verify`, checked against `sign`.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use nuki_exporter::source::webhook::signature::{SignatureError, Verifier, sign};

/// The fuzzer's bytes split into up to a few secrets, a header (or none) and a body.
#[derive(Arbitrary, Debug)]
struct Input<'a> {
    secrets: Vec<&'a [u8]>,
    header: Option<&'a [u8]>,
    /// Which signature byte to flip in the tampering check.
    flip: u8,
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let Input {
        secrets,
        header,
        flip,
        body,
    } = input;
    let secrets = &secrets[..secrets.len().min(4)];
    let verifier = Verifier::new(secrets);
    let result = verifier.verify(header, body);

    if secrets.is_empty() {
        assert_eq!(result, Ok(()), "no secret: everything is accepted");
        return;
    }
    // Accepted exactly when the header is some secret's signature, in any case.
    let genuine = header.is_some_and(|header| {
        let header = header.trim_ascii();
        secrets
            .iter()
            .any(|secret| header.eq_ignore_ascii_case(sign(secret, body).as_bytes()))
    });
    assert_eq!(result.is_ok(), genuine, "{result:?}");
    if header.is_none() {
        assert_eq!(result, Err(SignatureError::Missing));
    }

    // Every secret's own signature is accepted, in lower and upper case; with one hex digit
    // changed, or one digit short, it is not (unless another secret signed exactly that).
    for secret in secrets {
        let signature = sign(secret, body);
        assert_eq!(verifier.verify(Some(signature.as_bytes()), body), Ok(()));
        let upper = signature.to_ascii_uppercase();
        assert_eq!(verifier.verify(Some(upper.as_bytes()), body), Ok(()));
        assert_eq!(
            verifier.verify(Some(&signature.as_bytes()[..63]), body),
            Err(SignatureError::Malformed)
        );
        let mut changed = signature.into_bytes();
        let at = usize::from(flip) % changed.len();
        changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
        let collides = secrets
            .iter()
            .any(|other| sign(other, body).as_bytes() == changed.as_slice());
        if !collides {
            assert_eq!(
                verifier.verify(Some(&changed), body),
                Err(SignatureError::Mismatch)
            );
        }
    }
});
