//! A pure parser that finds the SNI host name in the first bytes of a TLS connection.
//!
//! The caller appends every byte it reads to one buffer and calls
//! [`parse_client_hello`] on the whole buffer again. The answer is
//! [`Parsed::NeedMore`] while the ClientHello is incomplete (every prefix of a valid
//! hello gets that answer), [`Parsed::Found`] with the validated name once the hello
//! is complete, or a typed [`HelloError`] as soon as the bytes cannot become a
//! routable hello. Once a buffer holds [`MAX_CLIENT_HELLO_BYTES`] bytes the answer is
//! never `NeedMore`, so a buffer of that size is always enough.
//!
//! The handshake message is reassembled across TLS records: a hello may be longer than
//! one record (post-quantum key shares make it grow), and a client may split it into
//! small records on purpose. Nothing here indexes without a bounds check, so no input
//! can make it panic.

use std::borrow::Cow;
use std::fmt;

/// Longest ClientHello handshake body accepted (the largest TLS record plaintext).
/// Real hellos, post-quantum key shares included, are well below this.
pub const MAX_HELLO_LEN: usize = 16 * 1024;

/// Most records a hello may be split into. Splitting into a handful of records is
/// legitimate; a bound keeps the record-header overhead, and so the buffer, bounded.
pub const MAX_HELLO_RECORDS: usize = 64;

/// Largest plaintext of one TLS record (RFC 8446, section 5.1).
const MAX_RECORD_LEN: usize = 1 << 14;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXTENSION_SERVER_NAME: u16 = 0x0000;
const NAME_TYPE_HOST_NAME: u8 = 0x00;

/// Bytes after which [`parse_client_hello`] always decides: every record header of
/// the most records allowed, plus the largest handshake message allowed.
pub const MAX_CLIENT_HELLO_BYTES: usize =
    MAX_HELLO_RECORDS * RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + MAX_HELLO_LEN;

/// What the bytes seen so far tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The ClientHello is not complete yet: read more bytes and parse again.
    NeedMore,
    /// The ClientHello is complete and names this server.
    Found(ServerName),
}

/// Why the first bytes of a connection are not a ClientHello we can route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("plain-text HTTP request instead of TLS")]
    PlainHttp,
    #[error("SSLv2-style ClientHello (not supported)")]
    SslV2,
    #[error("not TLS: first byte {first_byte:#04x}")]
    NotTls { first_byte: u8 },
    #[error("unsupported TLS record version {major}.{minor}")]
    UnsupportedRecordVersion { major: u8, minor: u8 },
    #[error("TLS record of {len} bytes exceeds the protocol limit")]
    RecordTooLong { len: usize },
    #[error("empty TLS handshake record")]
    EmptyRecord,
    #[error("record of content type {content_type} in the middle of the ClientHello")]
    UnexpectedRecord { content_type: u8 },
    #[error("ClientHello split into more than {MAX_HELLO_RECORDS} records")]
    TooManyRecords,
    #[error("handshake message type {handshake_type} is not a ClientHello")]
    NotClientHello { handshake_type: u8 },
    #[error("ClientHello of {len} bytes exceeds the limit of {MAX_HELLO_LEN}")]
    HelloTooLarge { len: usize },
    #[error("malformed ClientHello: bad {field}")]
    Malformed { field: &'static str },
    #[error("ClientHello has no server_name (SNI) extension")]
    NoSni,
    #[error("invalid SNI host name: {0}")]
    InvalidServerName(#[from] NameError),
}

impl HelloError {
    /// A short stable name for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PlainHttp => "plain_http",
            Self::SslV2 => "sslv2_hello",
            Self::NotTls { .. } => "not_tls",
            Self::UnsupportedRecordVersion { .. } => "unsupported_record_version",
            Self::RecordTooLong { .. } => "record_too_long",
            Self::EmptyRecord => "empty_record",
            Self::UnexpectedRecord { .. } => "unexpected_record",
            Self::TooManyRecords => "too_many_records",
            Self::NotClientHello { .. } => "not_client_hello",
            Self::HelloTooLarge { .. } => "hello_too_large",
            Self::Malformed { .. } => "malformed_hello",
            Self::NoSni => "no_sni",
            Self::InvalidServerName(_) => "invalid_server_name",
        }
    }
}

/// Why an SNI value is not a DNS host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty")]
    Empty,
    #[error("{len} bytes, longer than 253")]
    TooLong { len: usize },
    #[error("not ASCII")]
    NonAscii,
    #[error("character {0:?} is not a letter, digit, hyphen or dot")]
    InvalidCharacter(char),
    #[error("empty label")]
    EmptyLabel,
    #[error("label longer than 63 bytes")]
    LabelTooLong,
    #[error("label starts or ends with a hyphen")]
    HyphenAtLabelEdge,
    #[error("IP address literal")]
    IpAddress,
}

/// A validated, lower-cased DNS host name taken from SNI.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerName(String);

impl ServerName {
    /// Validates a host name as RFC 6066 wants it in SNI: ASCII letters, digits and
    /// hyphens in dot-separated labels, no trailing dot, no IP literal.
    pub fn parse(bytes: &[u8]) -> Result<Self, NameError> {
        if bytes.is_empty() {
            return Err(NameError::Empty);
        }
        if bytes.len() > 253 {
            return Err(NameError::TooLong { len: bytes.len() });
        }
        if !bytes.is_ascii() {
            return Err(NameError::NonAscii);
        }
        let mut last_label: &[u8] = &[];
        for label in bytes.split(|&b| b == b'.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > 63 {
                return Err(NameError::LabelTooLong);
            }
            if let Some(&bad) = label
                .iter()
                .find(|b| !(b.is_ascii_alphanumeric() || **b == b'-'))
            {
                return Err(NameError::InvalidCharacter(char::from(bad)));
            }
            if label.first() == Some(&b'-') || label.last() == Some(&b'-') {
                return Err(NameError::HyphenAtLabelEdge);
            }
            last_label = label;
        }
        // A top-level label is never all digits, so this catches IPv4 literals that
        // some clients put in SNI against the RFC.
        if last_label.iter().all(u8::is_ascii_digit) {
            return Err(NameError::IpAddress);
        }
        let name: String = bytes
            .iter()
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect();
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ServerName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Parses the bytes a client sent first; see the module documentation.
pub fn parse_client_hello(buf: &[u8]) -> Result<Parsed, HelloError> {
    if !classify_first_bytes(buf)? {
        return Ok(Parsed::NeedMore);
    }
    let Some(message) = reassemble_handshake(buf)? else {
        return Ok(Parsed::NeedMore);
    };
    parse_hello_body(&message).map(Parsed::Found)
}

/// Rejects the common non-TLS openings early with a precise reason. Returns whether
/// the bytes may be a TLS record (`false`: too few bytes to tell).
fn classify_first_bytes(buf: &[u8]) -> Result<bool, HelloError> {
    let Some(&first) = buf.first() else {
        return Ok(false);
    };
    if first == CONTENT_TYPE_HANDSHAKE {
        return Ok(true);
    }
    if first.is_ascii_uppercase() {
        return classify_http_method(buf, first);
    }
    // An SSLv2-compatible hello has a two-byte length with the high bit set, then
    // message type 1 (client hello).
    if first & 0x80 != 0 {
        return match buf.get(2) {
            None => Ok(false),
            Some(&HANDSHAKE_CLIENT_HELLO) => Err(HelloError::SslV2),
            Some(_) => Err(HelloError::NotTls { first_byte: first }),
        };
    }
    Err(HelloError::NotTls { first_byte: first })
}

/// Longest request method we wait for ("OPTIONS", "PROPFIND" and the like fit).
const MAX_METHOD_LEN: usize = 16;

/// An HTTP/1 request (or the h2c preface, "PRI * HTTP/2.0") starts with an upper-case
/// method token and a space; other upper-case openings (an SSH banner) are not HTTP.
fn classify_http_method(buf: &[u8], first: u8) -> Result<bool, HelloError> {
    let token_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if token_len > MAX_METHOD_LEN {
        return Err(HelloError::NotTls { first_byte: first });
    }
    match buf.get(token_len) {
        Some(b' ') => Err(HelloError::PlainHttp),
        None => Ok(false),
        Some(_) => Err(HelloError::NotTls { first_byte: first }),
    }
}

/// Walks the handshake records and joins their fragments until one whole handshake
/// message is there. Returns the message (header included), or `None` if more bytes
/// are needed. Only the bytes up to the end of the message are looked at: whatever
/// follows (a ChangeCipherSpec, early data) is left for the backend.
fn reassemble_handshake(buf: &[u8]) -> Result<Option<Cow<'_, [u8]>>, HelloError> {
    let mut message = Fragments::default();
    let mut rest = buf;
    for _ in 0..MAX_HELLO_RECORDS {
        let Some(record_len) = record_header(rest)? else {
            return Ok(None);
        };
        let fragment_bytes = rest.get(RECORD_HEADER_LEN..).unwrap_or_default();
        let available = fragment_bytes.len().min(record_len);
        let (fragment, after) = fragment_bytes.split_at(available);
        message.push(fragment);
        rest = after;
        if let Some(total) = handshake_len(message.bytes())?
            && message.bytes().len() >= total
        {
            return Ok(Some(message.into_prefix(total)));
        }
        if available < record_len {
            return Ok(None);
        }
    }
    Err(HelloError::TooManyRecords)
}

/// Checks one record header as far as its bytes are there; returns the record's
/// length once the whole header is there.
fn record_header(header: &[u8]) -> Result<Option<usize>, HelloError> {
    // The first record's type was checked by `classify_first_bytes`; a later record
    // of another type (an alert, say) interrupts the hello.
    if let Some(&content_type) = header.first()
        && content_type != CONTENT_TYPE_HANDSHAKE
    {
        return Err(HelloError::UnexpectedRecord { content_type });
    }
    if let (Some(&major), Some(&minor)) = (header.get(1), header.get(2)) {
        // Clients send 3.1 (or 3.0, 3.3) here whatever version they negotiate.
        if major != 3 || minor > 4 {
            return Err(HelloError::UnsupportedRecordVersion { major, minor });
        }
    }
    let (Some(&high), Some(&low)) = (header.get(3), header.get(4)) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([high, low]));
    if len == 0 {
        // RFC 8446 5.1: handshake records are never empty.
        return Err(HelloError::EmptyRecord);
    }
    if len > MAX_RECORD_LEN {
        return Err(HelloError::RecordTooLong { len });
    }
    Ok(Some(len))
}

/// Checks the handshake header as far as its bytes are there; returns the length of
/// the whole message (header included) once the header is complete.
fn handshake_len(message: &[u8]) -> Result<Option<usize>, HelloError> {
    if let Some(&handshake_type) = message.first()
        && handshake_type != HANDSHAKE_CLIENT_HELLO
    {
        return Err(HelloError::NotClientHello { handshake_type });
    }
    let Some(&[_, a, b, c]) = message.first_chunk::<HANDSHAKE_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    if len > MAX_HELLO_LEN {
        return Err(HelloError::HelloTooLarge { len });
    }
    Ok(Some(HANDSHAKE_HEADER_LEN + len))
}

/// The handshake message's fragments; borrowed while it comes in one record (the
/// common case), copied once it spans several.
#[derive(Default)]
struct Fragments<'a> {
    joined: Option<Cow<'a, [u8]>>,
}

impl<'a> Fragments<'a> {
    fn push(&mut self, fragment: &'a [u8]) {
        match &mut self.joined {
            None => self.joined = Some(Cow::Borrowed(fragment)),
            Some(joined) => joined.to_mut().extend_from_slice(fragment),
        }
    }

    fn bytes(&self) -> &[u8] {
        self.joined.as_deref().unwrap_or_default()
    }

    fn into_prefix(self, len: usize) -> Cow<'a, [u8]> {
        match self.joined {
            None => Cow::Borrowed(&[]),
            Some(Cow::Borrowed(b)) => Cow::Borrowed(b.get(..len).unwrap_or(b)),
            Some(Cow::Owned(mut v)) => {
                v.truncate(len);
                Cow::Owned(v)
            }
        }
    }
}

/// Reads big-endian fields off the front of a byte slice; every read is checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], HelloError> {
        let (taken, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or(HelloError::Malformed { field })?;
        self.rest = rest;
        Ok(taken)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, HelloError> {
        let (&byte, rest) = self
            .rest
            .split_first()
            .ok_or(HelloError::Malformed { field })?;
        self.rest = rest;
        Ok(byte)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, HelloError> {
        let (&bytes, rest) = self
            .rest
            .split_first_chunk::<2>()
            .ok_or(HelloError::Malformed { field })?;
        self.rest = rest;
        Ok(u16::from_be_bytes(bytes))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, field: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.u8(field)?;
        self.take(usize::from(len), field)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, field: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }
}

/// Parses a complete ClientHello handshake message (RFC 8446 4.1.2) down to the
/// server_name extension (RFC 6066 section 3).
fn parse_hello_body(message: &[u8]) -> Result<ServerName, HelloError> {
    let mut hello = Reader::new(message);
    hello.take(HANDSHAKE_HEADER_LEN, "handshake header")?;
    hello.take(2, "legacy_version")?;
    hello.take(32, "random")?;
    let session_id = hello.vec8("legacy_session_id")?;
    if session_id.len() > 32 {
        return Err(HelloError::Malformed {
            field: "legacy_session_id",
        });
    }
    let cipher_suites = hello.vec16("cipher_suites")?;
    if cipher_suites.is_empty() || cipher_suites.len() % 2 != 0 {
        return Err(HelloError::Malformed {
            field: "cipher_suites",
        });
    }
    if hello.vec8("compression_methods")?.is_empty() {
        return Err(HelloError::Malformed {
            field: "compression_methods",
        });
    }
    // Hellos from before TLS extensions end here.
    if hello.is_empty() {
        return Err(HelloError::NoSni);
    }
    let extensions = hello.vec16("extensions")?;
    if !hello.is_empty() {
        return Err(HelloError::Malformed {
            field: "bytes after extensions",
        });
    }
    let mut extensions = Reader::new(extensions);
    let mut server_name = None;
    while !extensions.is_empty() {
        let extension_type = extensions.u16("extension type")?;
        let data = extensions.vec16("extension length")?;
        if extension_type != EXTENSION_SERVER_NAME {
            continue;
        }
        // Two server_name extensions would let a backend see another name than the
        // one we routed on; the RFC forbids repeats, so refuse.
        if server_name.is_some() {
            return Err(HelloError::Malformed {
                field: "repeated server_name extension",
            });
        }
        server_name = Some(parse_server_name_extension(data)?);
    }
    server_name.ok_or(HelloError::NoSni)
}

fn parse_server_name_extension(data: &[u8]) -> Result<ServerName, HelloError> {
    let mut extension = Reader::new(data);
    let list = extension.vec16("server_name_list")?;
    if !extension.is_empty() || list.is_empty() {
        return Err(HelloError::Malformed {
            field: "server_name_list",
        });
    }
    let mut list = Reader::new(list);
    let mut host_name = None;
    while !list.is_empty() {
        let name_type = list.u8("server_name type")?;
        let name = list.vec16("server_name length")?;
        // No other name type was ever defined; all deployed parsers read them with
        // a two-byte length, as above, and skip them.
        if name_type != NAME_TYPE_HOST_NAME {
            continue;
        }
        if host_name.is_some() {
            return Err(HelloError::Malformed {
                field: "repeated host_name",
            });
        }
        host_name = Some(name);
    }
    let name = host_name.ok_or(HelloError::NoSni)?;
    Ok(ServerName::parse(name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_rules() {
        let ok = |s: &str| ServerName::parse(s.as_bytes()).map(ServerName::into_string);
        assert_eq!(ok("Acme.Example"), Ok("acme.example".to_string()));
        assert_eq!(ok("a-1.b2.example"), Ok("a-1.b2.example".to_string()));
        assert_eq!(ok("localhost"), Ok("localhost".to_string()));
        assert_eq!(ok(""), Err(NameError::Empty));
        assert_eq!(ok("acme.example."), Err(NameError::EmptyLabel));
        assert_eq!(ok("acme..example"), Err(NameError::EmptyLabel));
        assert_eq!(ok("-acme.example"), Err(NameError::HyphenAtLabelEdge));
        assert_eq!(ok("acme-.example"), Err(NameError::HyphenAtLabelEdge));
        assert_eq!(ok("ac_me.example"), Err(NameError::InvalidCharacter('_')));
        assert_eq!(ok("acme example"), Err(NameError::InvalidCharacter(' ')));
        assert_eq!(ok("127.0.0.1"), Err(NameError::IpAddress));
        assert_eq!(ok("äcme.example"), Err(NameError::NonAscii));
        assert_eq!(ok(&"a".repeat(64)), Err(NameError::LabelTooLong));
        let long = ["a".repeat(63).as_str(); 4].join(".");
        assert_eq!(ok(&long), Err(NameError::TooLong { len: 255 }));
    }

    #[test]
    fn max_bytes_is_consistent() {
        assert_eq!(MAX_CLIENT_HELLO_BYTES, 64 * 5 + 4 + 16 * 1024);
    }
}
