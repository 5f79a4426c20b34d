//! The options of a message's `Connection` header (RFC 9110 7.6.1): the
//! comma-separated tokens of every `Connection` field, trimmed, empty list elements
//! skipped (RFC 9110 5.6.1). One reader for every place the gateway looks at them: the
//! request heads it parses ([`crate::head`]), the request it decides and rewrites
//! ([`crate::request`], [`crate::exchange`]) and the upstream's answer heads
//! ([`crate::response_head`]).

use http::{HeaderMap, header};

/// The elements of comma-separated list field values, trimmed, empty ones skipped
/// (RFC 9110 5.6.1).
pub fn list<'v>(values: impl Iterator<Item = &'v [u8]>) -> impl Iterator<Item = &'v [u8]> {
    values
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The connection options of a header map (a request as the gateway decides it).
pub fn of_map(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    list(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(http::HeaderValue::as_bytes),
    )
}

/// The connection options of fields parsed by `httparse` (a head as read).
pub fn of_fields<'a, 'b: 'a>(
    fields: &'a [httparse::Header<'b>],
) -> impl Iterator<Item = &'a [u8]> + use<'a, 'b> {
    list(
        fields
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value),
    )
}

/// Whether `options` include `option` (tokens are case-insensitive, RFC 9110 7.6.1).
pub fn has<'o>(mut options: impl Iterator<Item = &'o [u8]>, option: &[u8]) -> bool {
    options.any(|t| t.eq_ignore_ascii_case(option))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_the_trimmed_tokens_of_every_connection_field() {
        let mut map = HeaderMap::new();
        map.append(
            header::CONNECTION,
            "keep-alive, ,X-Hop"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        map.append(
            header::CONNECTION,
            " Upgrade ".parse().unwrap_or_else(|_| unreachable!()),
        );
        map.append(
            header::UPGRADE,
            "close".parse().unwrap_or_else(|_| unreachable!()),
        );
        let got: Vec<&[u8]> = of_map(&map).collect();
        assert_eq!(got, [&b"keep-alive"[..], b"X-Hop", b"Upgrade"]);
        assert!(has(of_map(&map), b"upgrade"));
        assert!(!has(of_map(&map), b"close"));
        let fields = [
            httparse::Header {
                name: "CONNECTION",
                value: b"close,,",
            },
            httparse::Header {
                name: "Upgrade",
                value: b"websocket",
            },
        ];
        let got: Vec<&[u8]> = of_fields(&fields).collect();
        assert_eq!(got, [&b"close"[..]]);
    }
}
