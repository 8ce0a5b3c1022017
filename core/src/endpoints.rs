//! The Flex calls the sync makes, as typed values. A URL is only ever built here, from the
//! configured origin and percent-encoded path segments, so no id can change the path.

use crate::settings::FlexOrigin;

/// Columns requested from row-data: the contact and its business role are all the sync reads.
pub const LISTING_CODES: [&str; 2] = ["contact", "business-role"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlexCall {
    /// C2: `GET /line-item/{el}/row-data/`
    ListCrew { element: String },
    /// C1: `POST /line-item/{el}/add-resource/{resource}`, parameters as a form body.
    AddContact { element: String, resource: String },
    /// C4: `POST /line-item/{el}/row-data/` with a business-role cell.
    SetRole { element: String, line: String, role: String },
    /// C5: `DELETE /line-item/{line}`
    DeleteLine { line: String },
    /// C6: `DELETE /line-item` with a form body repeating `lineItemIds`.
    DeleteLines { lines: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

impl FlexCall {
    pub fn method(&self) -> Method {
        match self {
            FlexCall::ListCrew { .. } => Method::Get,
            FlexCall::AddContact { .. } | FlexCall::SetRole { .. } => Method::Post,
            FlexCall::DeleteLine { .. } | FlexCall::DeleteLines { .. } => Method::Delete,
        }
    }

    /// Safe to send again when the first answer was lost. Setting a cell to a value is; adding a
    /// contact is not (Flex makes a second line).
    pub fn is_idempotent(&self) -> bool {
        !matches!(self, FlexCall::AddContact { .. })
    }

    /// A short name for counters, logs and error codes.
    pub fn kind(&self) -> &'static str {
        match self {
            FlexCall::ListCrew { .. } => "list",
            FlexCall::AddContact { .. } => "add",
            FlexCall::SetRole { .. } => "role",
            FlexCall::DeleteLine { .. } => "delete",
            FlexCall::DeleteLines { .. } => "bulk_delete",
        }
    }

    pub fn url(&self, origin: &FlexOrigin) -> String {
        let (segments, query): (Vec<&str>, String) = match self {
            FlexCall::ListCrew { element } => (
                vec!["line-item", element, "row-data", ""],
                LISTING_CODES
                    .iter()
                    .map(|c| format!("codeList={}", encode(c)))
                    .chain(["node=root".to_string()])
                    .collect::<Vec<_>>()
                    .join("&"),
            ),
            FlexCall::AddContact { element, resource } => {
                (vec!["line-item", element, "add-resource", resource], String::new())
            }
            FlexCall::SetRole { element, .. } => (vec!["line-item", element, "row-data", ""], String::new()),
            FlexCall::DeleteLine { line } => (vec!["line-item", line], String::new()),
            FlexCall::DeleteLines { .. } => (vec!["line-item"], String::new()),
        };
        let mut url = origin.root();
        for segment in segments {
            url.push('/');
            url.push_str(&encode(segment));
        }
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        url
    }

    pub fn body(&self) -> Option<Body> {
        match self {
            FlexCall::AddContact { .. } => Some(Body {
                content_type: "application/x-www-form-urlencoded; charset=UTF-8",
                bytes: b"resourceParentId=&managedResourceLineItemType=contact&quantity=1&parentLineItemId=&nextSiblingId="
                    .to_vec(),
            }),
            FlexCall::SetRole { line, role, .. } => Some(Body {
                content_type: "application/json",
                bytes: serde_json::json!({"lineItemId": line, "fieldType": "business-role", "payloadValue": role})
                    .to_string()
                    .into_bytes(),
            }),
            FlexCall::DeleteLines { lines } => Some(Body {
                content_type: "application/x-www-form-urlencoded; charset=UTF-8",
                bytes: lines
                    .iter()
                    .map(|l| format!("lineItemIds={}", encode(l)))
                    .collect::<Vec<_>>()
                    .join("&")
                    .into_bytes(),
            }),
            FlexCall::ListCrew { .. } | FlexCall::DeleteLine { .. } => None,
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so `/`, `?`, `#` and `..` in an
/// id stay inside one segment.
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => out.push(byte as char),
            b'.' if segment.chars().any(|c| c != '.') => out.push('.'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> FlexOrigin {
        FlexOrigin::parse("https://t.flexrentalsolutions.com/f5/api", false).unwrap()
    }

    #[test]
    fn urls_are_built_from_typed_segments() {
        assert_eq!(
            FlexCall::ListCrew { element: "el-1".into() }.url(&origin()),
            "https://t.flexrentalsolutions.com/f5/api/line-item/el-1/row-data/?codeList=contact&codeList=business-role&node=root"
        );
        assert_eq!(
            FlexCall::AddContact { element: "e".into(), resource: "r".into() }.url(&origin()),
            "https://t.flexrentalsolutions.com/f5/api/line-item/e/add-resource/r"
        );
        assert_eq!(
            FlexCall::DeleteLine { line: "../../admin?x=1#f".into() }.url(&origin()),
            "https://t.flexrentalsolutions.com/f5/api/line-item/..%2F..%2Fadmin%3Fx%3D1%23f"
        );
        assert_eq!(FlexCall::DeleteLine { line: "..".into() }.url(&origin()), "https://t.flexrentalsolutions.com/f5/api/line-item/%2E%2E");
        let bulk = FlexCall::DeleteLines { lines: vec!["a".into(), "b&c".into()] };
        assert_eq!(bulk.url(&origin()), "https://t.flexrentalsolutions.com/f5/api/line-item");
        assert_eq!(bulk.body().unwrap().bytes, b"lineItemIds=a&lineItemIds=b%26c".to_vec());
    }

    #[test]
    fn only_the_add_is_not_idempotent() {
        assert!(!FlexCall::AddContact { element: "e".into(), resource: "r".into() }.is_idempotent());
        assert!(FlexCall::DeleteLine { line: "l".into() }.is_idempotent());
        let role = FlexCall::SetRole { element: "e".into(), line: "l".into(), role: "b".into() };
        assert!(role.is_idempotent());
        let body = String::from_utf8(role.body().unwrap().bytes).unwrap();
        assert!(body.contains(r#""fieldType":"business-role""#));
    }
}
