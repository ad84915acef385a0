//! The ClientHello parser against real hellos captured on loopback (see
//! tests/vectors/README.md), crafted bad inputs, and mutated inputs.

use std::path::PathBuf;

use hostplane_proxy::client_hello::{
    HelloError, MAX_CLIENT_HELLO_BYTES, MAX_HELLO_LEN, MAX_HELLO_RECORDS, NameError, Parsed,
    parse_client_hello,
};

/// Every captured vector and the server name its client asked for.
const VECTORS: &[(&str, &str)] = &[
    ("kubectl.bin", "acme.example"),
    ("curl.bin", "acme.example"),
    ("openssl.bin", "acme.example"),
    ("rustls.bin", "acme.example"),
    ("kubectl-two-records.bin", "acme.example"),
    ("openssl-header-split-three-records.bin", "acme.example"),
];

fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn found(name: &str) -> Result<Parsed, HelloError> {
    let name = hostplane_proxy::ServerName::parse(name.as_bytes()).unwrap();
    Ok(Parsed::Found(name))
}

/// The handshake message inside a single-record hello.
fn handshake_message(single_record: &[u8]) -> &[u8] {
    assert_eq!(single_record[0], 0x16);
    let len = usize::from(u16::from_be_bytes([single_record[3], single_record[4]]));
    &single_record[5..5 + len]
}

/// Frames a handshake message as records whose fragments have the given sizes; the
/// last record takes the rest.
fn records(message: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = message;
    for &size in sizes.iter().chain(std::iter::once(&usize::MAX)) {
        let (fragment, after) = rest.split_at(size.min(rest.len()));
        if fragment.is_empty() {
            break;
        }
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&u16::try_from(fragment.len()).unwrap().to_be_bytes());
        out.extend_from_slice(fragment);
        rest = after;
    }
    out
}

/// A ClientHello handshake message with these extensions (the raw extension
/// block, without its length).
fn hello_message(extensions: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // empty legacy_session_id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    if let Some(extensions) = extensions {
        body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
        body.extend_from_slice(extensions);
    }
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut message = vec![0x01, len[1], len[2], len[3]];
    message.extend_from_slice(&body);
    message
}

fn extension(extension_type: u16, data: &[u8]) -> Vec<u8> {
    let mut out = extension_type.to_be_bytes().to_vec();
    out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A server_name extension holding these (name type, name) entries.
fn sni_extension(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (name_type, name) in entries {
        list.push(*name_type);
        list.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    extension(0, &data)
}

fn hello_with_sni(name: &[u8]) -> Vec<u8> {
    records(&hello_message(Some(&sni_extension(&[(0, name)]))), &[])
}

#[test]
fn captured_hellos_name_their_server() {
    for (file, server_name) in VECTORS {
        assert_eq!(
            parse_client_hello(&vector(file)),
            found(server_name),
            "{file}"
        );
    }
}

#[test]
fn every_prefix_of_a_captured_hello_needs_more() {
    for (file, _) in VECTORS {
        let hello = vector(file);
        for len in 0..hello.len() {
            assert_eq!(
                parse_client_hello(&hello[..len]),
                Ok(Parsed::NeedMore),
                "{file}, first {len} of {} bytes",
                hello.len()
            );
        }
    }
}

#[test]
fn post_quantum_hello_is_larger_than_one_kib() {
    // Go's X25519MLKEM768 key share alone is 1,216 bytes.
    let kubectl = vector("kubectl.bin");
    assert!(
        kubectl.len() > 1100,
        "kubectl hello is {} bytes",
        kubectl.len()
    );
}

#[test]
fn multi_record_vectors_hold_the_same_message_as_their_capture() {
    let reframe =
        |original: &str, sizes: &[usize]| records(handshake_message(&vector(original)), sizes);
    assert_eq!(
        vector("kubectl-two-records.bin"),
        reframe("kubectl.bin", &[700])
    );
    assert_eq!(
        vector("openssl-header-split-three-records.bin"),
        reframe("openssl.bin", &[2, 150])
    );
}

#[test]
fn bytes_after_the_hello_are_ignored() {
    // TLS 1.3 clients may send a ChangeCipherSpec or early data right behind.
    let mut hello = vector("curl.bin");
    hello.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
    assert_eq!(parse_client_hello(&hello), found("acme.example"));
}

#[test]
fn hello_split_into_the_most_records_allowed_parses() {
    let message = handshake_message(&vector("openssl.bin")).to_vec();
    let ones = vec![1; MAX_HELLO_RECORDS - 1];
    let hello = records(&message, &ones);
    assert_eq!(parse_client_hello(&hello), found("acme.example"));
    for len in 0..hello.len() {
        assert_eq!(parse_client_hello(&hello[..len]), Ok(Parsed::NeedMore));
    }
}

#[test]
fn hello_split_into_too_many_records_is_refused() {
    let message = handshake_message(&vector("openssl.bin")).to_vec();
    let hello = records(&message, &[1; MAX_HELLO_RECORDS]);
    assert_eq!(parse_client_hello(&hello), Err(HelloError::TooManyRecords));
    // Refused as soon as the last allowed record is in, without waiting for more.
    assert_eq!(
        parse_client_hello(&hello[..MAX_HELLO_RECORDS * 6]),
        Err(HelloError::TooManyRecords)
    );
}

#[test]
fn largest_hello_fills_the_buffer_bound_exactly() {
    // A padding extension (21) brings the body to the largest length allowed.
    let sni = sni_extension(&[(0, b"acme.example")]);
    let base = hello_message(Some(&sni)).len() - 4;
    let padding = extension(21, &vec![0; MAX_HELLO_LEN - base - 4]);
    let extensions = [sni, padding].concat();
    let message = hello_message(Some(&extensions));
    assert_eq!(message.len(), 4 + MAX_HELLO_LEN);
    let hello = records(&message, &[1; MAX_HELLO_RECORDS - 1]);
    assert_eq!(hello.len(), MAX_CLIENT_HELLO_BYTES);
    assert_eq!(parse_client_hello(&hello), found("acme.example"));
    assert_eq!(
        parse_client_hello(&hello[..hello.len() - 1]),
        Ok(Parsed::NeedMore)
    );
}

#[test]
fn plain_http_is_refused() {
    for request in [
        &b"GET / HTTP/1.1\r\nHost: acme.example\r\n\r\n"[..],
        b"POST /api HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"PROPFIND ",
    ] {
        assert_eq!(parse_client_hello(request), Err(HelloError::PlainHttp));
    }
    // A method may still be coming.
    assert_eq!(parse_client_hello(b"GE"), Ok(Parsed::NeedMore));
}

#[test]
fn sslv2_hello_is_refused() {
    // Two-byte length 0x802e, msg type 1 (client hello), version 3.1, ...
    let sslv2 = [
        0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    assert_eq!(parse_client_hello(&sslv2[..2]), Ok(Parsed::NeedMore));
    assert_eq!(parse_client_hello(&sslv2), Err(HelloError::SslV2));
}

#[test]
fn garbage_is_not_tls() {
    assert_eq!(
        parse_client_hello(b"\x00\x01\x02\x03"),
        Err(HelloError::NotTls { first_byte: 0 })
    );
    assert_eq!(
        parse_client_hello(b"SSH-2.0-OpenSSH_9.2"),
        Err(HelloError::NotTls { first_byte: b'S' })
    );
    // Too long for a method, whatever follows (found by the fuzz target).
    for long_token in [&[b'G'; 17][..], &[[b'G'; 71].as_slice(), b" "].concat()] {
        assert_eq!(
            parse_client_hello(long_token),
            Err(HelloError::NotTls { first_byte: b'G' })
        );
    }
    assert_eq!(
        parse_client_hello(&[0x90, 0x00, 0x07]),
        Err(HelloError::NotTls { first_byte: 0x90 })
    );
}

#[test]
fn record_header_errors() {
    assert_eq!(
        parse_client_hello(&[0x16, 0x02, 0x00]),
        Err(HelloError::UnsupportedRecordVersion { major: 2, minor: 0 })
    );
    assert_eq!(
        parse_client_hello(&[0x16, 0x03, 0x09, 0x00]),
        Err(HelloError::UnsupportedRecordVersion { major: 3, minor: 9 })
    );
    assert_eq!(
        parse_client_hello(&[0x16, 0x03, 0x01, 0x40, 0x01]),
        Err(HelloError::RecordTooLong { len: 0x4001 })
    );
    assert_eq!(
        parse_client_hello(&[0x16, 0x03, 0x01, 0x00, 0x00, 0x01]),
        Err(HelloError::EmptyRecord)
    );
    // An alert where the second fragment of the hello should be.
    let mut hello = records(handshake_message(&vector("openssl.bin")), &[100]);
    hello.truncate(5 + 100);
    hello.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
    assert_eq!(
        parse_client_hello(&hello),
        Err(HelloError::UnexpectedRecord { content_type: 0x15 })
    );
}

#[test]
fn handshake_header_errors() {
    // A ServerHello instead of a ClientHello.
    assert_eq!(
        parse_client_hello(&[0x16, 0x03, 0x03, 0x00, 0x30, 0x02]),
        Err(HelloError::NotClientHello { handshake_type: 2 })
    );
    assert_eq!(
        parse_client_hello(&[0x16, 0x03, 0x01, 0x00, 0x30, 0x01, 0x00, 0x40, 0x01]),
        Err(HelloError::HelloTooLarge { len: 0x4001 })
    );
    assert_eq!(
        parse_client_hello(&[0x16, 0x03, 0x01, 0x00, 0x30, 0x01, 0xff, 0xff, 0xff]),
        Err(HelloError::HelloTooLarge { len: 0xff_ffff })
    );
}

#[test]
fn impossible_lengths_inside_the_hello_are_malformed() {
    let good = hello_message(Some(&sni_extension(&[(0, b"acme.example")])));
    let malformed = |patch: &dyn Fn(&mut Vec<u8>)| {
        let mut message = good.clone();
        patch(&mut message);
        parse_client_hello(&records(&message, &[]))
    };
    // Offsets in the message: 4 header, 2 version, 32 random, then session id.
    let session_id_len = 4 + 2 + 32;
    assert_eq!(
        malformed(&|m| m[session_id_len] = 33),
        Err(HelloError::Malformed {
            field: "legacy_session_id"
        })
    );
    let cipher_suites_len = session_id_len + 1;
    assert_eq!(
        malformed(&|m| m[cipher_suites_len + 1] = 0xf0),
        Err(HelloError::Malformed {
            field: "cipher_suites"
        })
    );
    assert_eq!(
        malformed(&|m| m[cipher_suites_len + 1] = 3),
        Err(HelloError::Malformed {
            field: "cipher_suites"
        })
    );
    let extensions_len = cipher_suites_len + 2 + 2 + 2;
    assert_eq!(
        malformed(&|m| m[extensions_len + 1] += 1),
        Err(HelloError::Malformed {
            field: "extensions"
        })
    );
    assert_eq!(
        malformed(&|m| m[extensions_len + 1] -= 1),
        Err(HelloError::Malformed {
            field: "bytes after extensions"
        })
    );
    // The server_name_list length one more than the extension holds.
    let list_len = extensions_len + 2 + 4;
    assert_eq!(
        malformed(&|m| m[list_len + 1] += 1),
        Err(HelloError::Malformed {
            field: "server_name_list"
        })
    );
}

#[test]
fn hello_without_sni_is_refused() {
    let alpn = extension(16, b"\x00\x03\x02h2");
    assert_eq!(
        parse_client_hello(&records(&hello_message(Some(&alpn)), &[])),
        Err(HelloError::NoSni)
    );
    assert_eq!(
        parse_client_hello(&records(&hello_message(None), &[])),
        Err(HelloError::NoSni)
    );
    // Only a name of an unknown type.
    let other = sni_extension(&[(7, b"acme.example")]);
    assert_eq!(
        parse_client_hello(&records(&hello_message(Some(&other)), &[])),
        Err(HelloError::NoSni)
    );
}

#[test]
fn malformed_server_names_are_refused() {
    let invalid = |name: &[u8]| parse_client_hello(&hello_with_sni(name));
    let error = |e| Err(HelloError::InvalidServerName(e));
    assert_eq!(invalid(b""), error(NameError::Empty));
    assert_eq!(
        invalid("äcme.example".as_bytes()),
        error(NameError::NonAscii)
    );
    assert_eq!(
        invalid(b"acme\0.example"),
        error(NameError::InvalidCharacter('\0'))
    );
    assert_eq!(invalid(b"acme.example."), error(NameError::EmptyLabel));
    assert_eq!(invalid(b"10.0.0.1"), error(NameError::IpAddress));
    assert_eq!(invalid(b"ACME.Example"), found("acme.example"));
}

#[test]
fn repeated_names_are_refused() {
    // Two names would let the backend pick another tenant than the one routed to.
    let twice = sni_extension(&[(0, b"acme.example"), (0, b"other.example")]);
    assert_eq!(
        parse_client_hello(&records(&hello_message(Some(&twice)), &[])),
        Err(HelloError::Malformed {
            field: "repeated host_name"
        })
    );
    let sni = sni_extension(&[(0, b"acme.example")]);
    let two_extensions = [sni.clone(), sni].concat();
    assert_eq!(
        parse_client_hello(&records(&hello_message(Some(&two_extensions)), &[])),
        Err(HelloError::Malformed {
            field: "repeated server_name extension"
        })
    );
}

/// xorshift64*: deterministic, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 | 1 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] = rng.byte();
            }
            2 if !input.is_empty() => {
                // Length fields hide in the first bytes of each structure.
                let at = rng.below(input.len().min(64));
                input[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            3 => {
                let at = rng.below(input.len() + 1);
                input.insert(at, rng.byte());
            }
            _ if !input.is_empty() => {
                let at = rng.below(input.len());
                input.remove(at);
            }
            _ => {}
        }
    }
}

#[test]
fn mutated_and_random_inputs_never_panic_and_decisions_are_final() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let seeds: Vec<Vec<u8>> = VECTORS.iter().map(|(file, _)| vector(file)).collect();
    for round in 0..20_000 {
        let mut input = if round % 10 == 0 {
            // Random bytes behind a plausible record header.
            let mut random = vec![0x16, 0x03, 0x01, rng.byte() & 0x3f, rng.byte()];
            random.extend((0..rng.below(2048)).map(|_| rng.byte()));
            random
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        mutate(&mut rng, &mut input);
        let full = parse_client_hello(&input);
        // Whatever a prefix decides, more bytes do not change it.
        let prefix = rng.below(input.len() + 1);
        let early = parse_client_hello(&input[..prefix]);
        if early != Ok(Parsed::NeedMore) {
            assert_eq!(
                early, full,
                "round {round}: prefix {prefix} of {input:02x?}"
            );
        }
        if input.len() >= MAX_CLIENT_HELLO_BYTES {
            assert_ne!(full, Ok(Parsed::NeedMore));
        }
    }
}

#[test]
fn long_random_inputs_are_always_decided() {
    let mut rng = Rng(42);
    for _ in 0..200 {
        let mut input = vec![0x16, 0x03, 0x01];
        input.extend((0..MAX_CLIENT_HELLO_BYTES).map(|_| rng.byte()));
        assert_ne!(parse_client_hello(&input), Ok(Parsed::NeedMore));
    }
}

/// A live tokio-rustls client (ring provider) sends its ClientHello for acme.example to a
/// loopback listener; the parser must name it. With HOSTPLANE_REFRESH_VECTORS=1 the capture
/// also replaces tests/vectors/rustls.bin.
#[tokio::test]
async fn live_rustls_client_hello_names_its_server() {
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let client = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("acme.example").unwrap();
        // Fails once the listener closes without answering; only the hello matters.
        let _ = connector.connect(name, tcp).await;
    });
    let (mut conn, _) = listener.accept().await.unwrap();
    let mut hello = Vec::new();
    // The client waits for a ServerHello after its hello: silence ends the hello.
    let idle = std::time::Duration::from_secs(1);
    while let Ok(Ok(n)) = tokio::time::timeout(idle, conn.read_buf(&mut hello)).await {
        if n == 0 {
            break;
        }
    }
    drop(conn);
    client.await.unwrap();
    match parse_client_hello(&hello) {
        Ok(Parsed::Found(name)) => assert_eq!(name.as_str(), "acme.example"),
        other => panic!(
            "live rustls hello ({} bytes) parsed as {other:?}",
            hello.len()
        ),
    }
    if std::env::var_os("HOSTPLANE_REFRESH_VECTORS").is_some() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/rustls.bin");
        std::fs::write(&path, &hello).unwrap();
        println!("{}: {} bytes", path.display(), hello.len());
    }
}
