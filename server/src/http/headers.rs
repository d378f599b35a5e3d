//! A read-only view of a request's header fields, borrowed from the receive buffer.

/// The header fields of one request, in the order they arrived.
///
/// Names are compared case-insensitively. Repeated fields are kept apart so that list-valued
/// fields (`Accept-Encoding`, `If-None-Match`) can be read across all their lines, and so that
/// framing checks can see duplicates.
#[derive(Clone, Copy, Debug)]
pub struct Headers<'a> {
    fields: &'a [httparse::Header<'a>],
}

impl<'a> Headers<'a> {
    pub fn new(fields: &'a [httparse::Header<'a>]) -> Self {
        Headers { fields }
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// The values of every field called `name`, in order.
    pub fn get_all<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.fields
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// How many fields are called `name`.
    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.fields.iter().map(|h| (h.name, h.value))
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Splits a comma-separated field value into trimmed, non-empty elements (RFC 9110 §5.6.1).
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_repeats_are_kept() {
        let fields = [
            httparse::Header {
                name: "Accept-Encoding",
                value: b"gzip",
            },
            httparse::Header {
                name: "host",
                value: b"x",
            },
            httparse::Header {
                name: "accept-encoding",
                value: b"br;q=0.5",
            },
        ];
        let h = Headers::new(&fields);
        assert_eq!(h.get("HOST"), Some(&b"x"[..]));
        assert_eq!(
            h.get_all("Accept-Encoding").collect::<Vec<_>>(),
            vec![&b"gzip"[..], &b"br;q=0.5"[..]]
        );
        assert_eq!(h.count("accept-encoding"), 2);
        assert_eq!(h.get("range"), None);
    }

    #[test]
    fn list_elements_skip_empty_ones() {
        let v: Vec<_> = list_elements(b" a , ,b,").collect();
        assert_eq!(v, vec![&b"a"[..], &b"b"[..]]);
    }
}
