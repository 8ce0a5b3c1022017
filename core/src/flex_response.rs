//! Reading Flex's JSON: the row-data tree of a crew call and the add-resource answer.
//!
//! No public capture shows a crew-call row, so every key that a
//! public client reads is accepted here, and anything that cannot be recognised as a contact is
//! left alone rather than guessed at: a node we cannot classify is never a candidate for deletion.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// One contact line of a crew call, as Flex lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlexContact {
    pub line_id: String,
    pub resource_id: String,
    /// The business role Flex reports for the line, when the listing carries that column.
    pub business_role: Option<String>,
}

/// What one row-data listing says about a crew call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrewListing {
    pub contacts: Vec<FlexContact>,
    /// Line ids of every node that is not a recognisable contact (containers, notes, other
    /// resource types, untyped rows without a resource). They are never deleted.
    pub other_line_ids: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("Flex answered with a body that is not JSON")]
    NotJson,
    #[error("Flex listing is not an array of rows (found {0})")]
    NotAnArray(&'static str),
}

/// A string id under one of several keys, with dotted paths for nested objects.
fn first_id(node: &Value, paths: &[&str]) -> Option<String> {
    paths.iter().find_map(|path| {
        let found = path.split('.').try_fold(node, |v, key| v.get(key))?;
        match found {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    })
}

/// Parses a `GET /line-item/{el}/row-data/` body: a bare array of rows nested through `children`.
///
/// Every node is read as it streams by, keeping only the keys below (no tree of JSON values is
/// built: the listing is the one answer every sync parses). Which keys count, and in which order
/// of preference:
/// - the line id: `id`, `lineItemId`, `lineItem.id`; the resource: `resourceId`, `resource.id`,
///   `resource.resourceId` (a non-empty string, trimmed, or a number);
/// - the line type: `managedResourceLineItemType`, then `type`, each a string or an object with
///   `name` (else `code`), lower-cased;
/// - the business role: `business-role`, `business-role.id`, `business-role.data`,
///   `businessRole`, `businessRole.id`;
/// - the children: `children`, `items` and `data.children`, all of them, in that order.
///
/// A key given twice counts as its last value, as in a JSON object read whole.
pub fn parse_listing(body: &[u8]) -> Result<CrewListing, ResponseError> {
    let rows = match serde_json::from_slice::<Root>(body).map_err(|_| ResponseError::NotJson)? {
        Root::Rows(rows) => rows,
        Root::Other(kind) => return Err(ResponseError::NotAnArray(kind)),
    };
    let mut listing = CrewListing::default();
    let mut stack = rows;
    stack.reverse();
    while let Some(node) = stack.pop() {
        let is_contact = match node.kind.as_deref() {
            Some("contact") => true,
            // An untyped leaf that names a resource is how some tenants show a crew row; an
            // untyped node with children is a container and never a contact.
            None => node.kids.is_empty() && node.resource_id.is_some(),
            Some(_) => false,
        };
        match (node.line_id, node.resource_id, is_contact) {
            (Some(line_id), Some(resource_id), true) => {
                listing.contacts.push(FlexContact { line_id, resource_id, business_role: node.business_role })
            }
            (Some(line_id), _, _) => listing.other_line_ids.push(line_id),
            (None, _, _) => {}
        }
        stack.extend(node.kids.into_iter().rev());
    }
    Ok(listing)
}

/// The body of a listing: its rows, or what it is instead of an array.
enum Root {
    Rows(Vec<Node>),
    Other(&'static str),
}

/// What one node of the tree says (anything that is not an object says nothing).
#[derive(Default)]
struct Node {
    line_id: Option<String>,
    resource_id: Option<String>,
    kind: Option<String>,
    business_role: Option<String>,
    kids: Vec<Node>,
}

/// A value read for the ids it holds: itself when it is an id, or an object's `id`, `data` and
/// `resourceId` when those are.
#[derive(Default)]
struct Ids {
    itself: Option<String>,
    id: Option<String>,
    data: Option<String>,
    resource_id: Option<String>,
}

/// A line type: a string, or an object's `name` (its `code` when it has no `name`).
#[derive(Default)]
struct Kind(Option<String>);

/// A string, trimmed and lower-cased; nothing for any other value.
#[derive(Default)]
struct Text(Option<String>);

/// The nodes of an array, none for anything else.
#[derive(Default)]
struct Kids(Vec<Node>);

/// An object's `children`.
#[derive(Default)]
struct Data(Kids);

/// A value the listing does not use, read to the end all the same: a body is JSON whole or not
/// at all (serde's `IgnoredAny` passes over bad strings, numbers out of range and nesting too
/// deep, which a whole JSON tree refuses).
#[derive(Default)]
struct Skip;

/// What an id is when given as a string or a number.
fn id_of_str(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn id_of_f64(v: f64) -> Option<String> {
    serde_json::Number::from_f64(v).map(|n| n.to_string())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<Skip, Skip>()?.is_some() {}
    Ok(())
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Skip>()?.is_some() {}
    Ok(())
}

/// The visitor methods of a value that means nothing unless it is of the kinds the visitor reads
/// itself: every other kind is skipped and gives the default.
macro_rules! nothing_from {
    ($($method:ident($($arg:ty)?)),*) => {
        $(fn $method<E: de::Error>(self $(, _: $arg)?) -> Result<Self::Value, E> { Ok(Default::default()) })*
    };
}

macro_rules! nothing_from_containers {
    (map) => {
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            skip_map(map).map(|_| Default::default())
        }
    };
    (seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq).map(|_| Default::default())
        }
    };
}

/// A type read by a visitor of its own: the visitor's unit struct, `Deserialize` for the type
/// through it, and the visitor with the methods given.
macro_rules! reader {
    ($target:ident, $visitor:ident { $($methods:tt)* }) => {
        struct $visitor;

        impl<'de> Deserialize<'de> for $target {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_any($visitor)
            }
        }

        impl<'de> Visitor<'de> for $visitor {
            type Value = $target;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            $($methods)*
        }
    };
}

reader!(Root, RootVisitor {
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Root, A::Error> {
        KidsVisitor.visit_seq(seq).map(|kids| Root::Rows(kids.0))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Root, A::Error> {
        skip_map(map).map(|_| Root::Other("an object"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Root, E> {
        Ok(Root::Other("a string"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Root, E> {
        Ok(Root::Other("a boolean"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Root, E> {
        Ok(Root::Other("a number"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Root, E> {
        Ok(Root::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Root, E> {
        Ok(Root::Other("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Root, E> {
        Ok(Root::Other("null"))
    }
});

reader!(Kids, KidsVisitor {
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kids, A::Error> {
        let mut kids = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(node) = seq.next_element::<Node>()? {
            kids.push(node);
        }
        Ok(Kids(kids))
    }
    nothing_from_containers!(map);
    nothing_from!(visit_str(&str), visit_bool(bool), visit_u64(u64), visit_i64(i64), visit_f64(f64), visit_unit());
});

/// The keys of a node, or of an object inside one, that the listing reads.
enum Key {
    Id,
    LineItemId,
    LineItem,
    ResourceId,
    Resource,
    LineItemType,
    Type,
    Children,
    Items,
    Data,
    BusinessRoleDashed,
    BusinessRole,
    Name,
    Code,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "id" => Key::Id,
                    "lineItemId" => Key::LineItemId,
                    "lineItem" => Key::LineItem,
                    "resourceId" => Key::ResourceId,
                    "resource" => Key::Resource,
                    "managedResourceLineItemType" => Key::LineItemType,
                    "type" => Key::Type,
                    "children" => Key::Children,
                    "items" => Key::Items,
                    "data" => Key::Data,
                    "business-role" => Key::BusinessRoleDashed,
                    "businessRole" => Key::BusinessRole,
                    "name" => Key::Name,
                    "code" => Key::Code,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

reader!(Node, NodeVisitor {
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let (mut line, mut line_item_id, mut line_item) = (Ids::default(), Ids::default(), Ids::default());
        let (mut resource_id, mut resource) = (Ids::default(), Ids::default());
        let (mut line_item_type, mut kind) = (Kind::default(), Kind::default());
        let (mut children, mut items, mut data) = (Kids::default(), Kids::default(), Data::default());
        let (mut role_dashed, mut role) = (Ids::default(), Ids::default());
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Id => line = map.next_value()?,
                Key::LineItemId => line_item_id = map.next_value()?,
                Key::LineItem => line_item = map.next_value()?,
                Key::ResourceId => resource_id = map.next_value()?,
                Key::Resource => resource = map.next_value()?,
                Key::LineItemType => line_item_type = map.next_value()?,
                Key::Type => kind = map.next_value()?,
                Key::Children => children = map.next_value()?,
                Key::Items => items = map.next_value()?,
                Key::Data => data = map.next_value()?,
                Key::BusinessRoleDashed => role_dashed = map.next_value()?,
                Key::BusinessRole => role = map.next_value()?,
                Key::Name | Key::Code | Key::Other => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        let mut kids = children.0;
        kids.extend(items.0);
        kids.extend(data.0 .0);
        Ok(Node {
            line_id: line.itself.or(line_item_id.itself).or(line_item.id),
            resource_id: resource_id.itself.or(resource.id).or(resource.resource_id),
            kind: line_item_type.0.or(kind.0),
            business_role: role_dashed.itself.or(role_dashed.id).or(role_dashed.data).or(role.itself).or(role.id),
            kids,
        })
    }
    nothing_from_containers!(seq);
    nothing_from!(visit_str(&str), visit_bool(bool), visit_u64(u64), visit_i64(i64), visit_f64(f64), visit_unit());
});

reader!(Ids, IdsVisitor {
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Ids, E> {
        Ok(Ids { itself: id_of_str(s), ..Ids::default() })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ids, E> {
        Ok(Ids { itself: Some(v.to_string()), ..Ids::default() })
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ids, E> {
        Ok(Ids { itself: Some(v.to_string()), ..Ids::default() })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ids, E> {
        Ok(Ids { itself: id_of_f64(v), ..Ids::default() })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ids, A::Error> {
        let mut ids = Ids::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Id => ids.id = map.next_value::<Ids>()?.itself,
                Key::Data => ids.data = map.next_value::<Ids>()?.itself,
                Key::ResourceId => ids.resource_id = map.next_value::<Ids>()?.itself,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(ids)
    }
    nothing_from_containers!(seq);
    nothing_from!(visit_bool(bool), visit_unit());
});

reader!(Kind, KindVisitor {
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Kind, E> {
        TextVisitor.visit_str(s).map(|text| Kind(text.0))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        // `name` decides when it is there, a string or not; `code` only without it.
        let (mut name, mut code) = (None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Name => name = Some(map.next_value::<Text>()?.0),
                Key::Code => code = map.next_value::<Text>()?.0,
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Kind(name.unwrap_or(code)))
    }
    nothing_from_containers!(seq);
    nothing_from!(visit_bool(bool), visit_u64(u64), visit_i64(i64), visit_f64(f64), visit_unit());
});

reader!(Text, TextVisitor {
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Text, E> {
        Ok(Text(Some(s.trim().to_ascii_lowercase())))
    }
    nothing_from_containers!(map);
    nothing_from_containers!(seq);
    nothing_from!(visit_bool(bool), visit_u64(u64), visit_i64(i64), visit_f64(f64), visit_unit());
});

reader!(Skip, SkipVisitor {
    nothing_from_containers!(map);
    nothing_from_containers!(seq);
    nothing_from!(visit_str(&str), visit_bool(bool), visit_u64(u64), visit_i64(i64), visit_f64(f64), visit_unit());
});

reader!(Data, DataVisitor {
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
        let mut data = Data::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Children => data = Data(map.next_value()?),
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(data)
    }
    nothing_from_containers!(seq);
    nothing_from!(visit_str(&str), visit_bool(bool), visit_u64(u64), visit_i64(i64), visit_f64(f64), visit_unit());
});

/// The line id an add-resource answer names for the new contact, if any.
///
/// The documented answer is `{"addedResourceLineIds": [...], "affectedRootLineIds": [...]}`; the
/// root line is the contact itself, the added lines may include accessories, so the root wins.
pub fn parse_added_line_id(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    ["affectedRootLineIds", "addedResourceLineIds"]
        .iter()
        .find_map(|key| {
            value
                .get(*key)
                .and_then(Value::as_array)
                .and_then(|ids| ids.iter().find_map(|id| id.as_str()))
                .filter(|id| !id.trim().is_empty())
                .map(|id| id.trim().to_string())
        })
        .or_else(|| first_id(&value, &["id", "lineItemId", "data.id", "data.lineItemId"]))
}

/// Flex reports errors as `{"exceptionMessage": "..."}`; the 429 of an exhausted hourly budget
/// says "Maximum API request limit ... reached".
pub fn exception_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value
        .get("exceptionMessage")
        .or_else(|| value.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub fn is_budget_exhausted(body: &[u8]) -> bool {
    exception_message(body)
        .map(|m| m.to_ascii_lowercase().contains("maximum api request limit"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_the_tree_and_reads_every_documented_key() {
        let body = br#"[
          {"id":"g1","children":[
             {"id":"l1","resourceId":"r1","managedResourceLineItemType":"contact","business-role":"b1"},
             {"lineItemId":"l2","resource":{"id":"r2"},"type":"CONTACT"},
             {"id":"l3","resource":{"resourceId":"r3"}}
          ]},
          {"id":"n1","managedResourceLineItemType":"note"},
          {"id":"eq","resourceId":"m1","managedResourceLineItemType":"inventory-model"},
          {"id":"c9","resourceId":"r9","children":[{"id":"l4","resourceId":"r4","type":{"name":"contact"}}]}
        ]"#;
        let listing = parse_listing(body).unwrap();
        let got: Vec<_> = listing
            .contacts
            .iter()
            .map(|c| (c.line_id.as_str(), c.resource_id.as_str(), c.business_role.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![("l1", "r1", Some("b1")), ("l2", "r2", None), ("l3", "r3", None), ("l4", "r4", None)]
        );
        assert_eq!(listing.other_line_ids, vec!["g1", "n1", "eq", "c9"]);
    }

    /// The listing as a whole JSON tree reads it: the reading `parse_listing` streams, kept as
    /// the oracle it is checked against.
    fn listing_of_tree(body: &[u8]) -> Result<CrewListing, ResponseError> {
        fn line_type(node: &Value) -> Option<String> {
            ["managedResourceLineItemType", "type"].iter().find_map(|key| match node.get(*key) {
                Some(Value::String(s)) => Some(s.trim().to_ascii_lowercase()),
                Some(Value::Object(o)) => {
                    o.get("name").or_else(|| o.get("code")).and_then(Value::as_str).map(|s| s.trim().to_ascii_lowercase())
                }
                _ => None,
            })
        }
        fn children(node: &Value) -> Vec<&Value> {
            ["children", "items"]
                .iter()
                .filter_map(|key| node.get(*key).and_then(Value::as_array))
                .chain(node.get("data").and_then(|d| d.get("children")).and_then(Value::as_array))
                .flatten()
                .collect()
        }
        let root: Value = serde_json::from_slice(body).map_err(|_| ResponseError::NotJson)?;
        let Value::Array(rows) = &root else {
            return Err(ResponseError::NotAnArray(match root {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                _ => "an object",
            }));
        };
        let mut listing = CrewListing::default();
        let mut stack: Vec<&Value> = rows.iter().rev().collect();
        while let Some(node) = stack.pop() {
            let kids = children(node);
            let line_id = first_id(node, &["id", "lineItemId", "lineItem.id"]);
            let resource_id = first_id(node, &["resourceId", "resource.id", "resource.resourceId"]);
            let is_contact = match line_type(node).as_deref() {
                Some("contact") => true,
                None => kids.is_empty() && resource_id.is_some(),
                Some(_) => false,
            };
            let role = ["business-role", "business-role.id", "business-role.data", "businessRole", "businessRole.id"];
            match (line_id, resource_id, is_contact) {
                (Some(line_id), Some(resource_id), true) => {
                    listing.contacts.push(FlexContact { line_id, resource_id, business_role: first_id(node, &role) })
                }
                (Some(line_id), _, _) => listing.other_line_ids.push(line_id),
                (None, _, _) => {}
            }
            stack.extend(kids.into_iter().rev());
        }
        Ok(listing)
    }

    /// Random JSON text in the listing's vocabulary: every key it reads, nested where it reads
    /// them, with values of every kind, keys given twice and keys spelled with escapes.
    fn random_json(rng: &mut crate::simulation::rng::Rng, depth: usize, out: &mut String) {
        const KEYS: [&str; 17] = [
            "id", "lineItemId", "lineItem", "resourceId", "resource", "managedResourceLineItemType", "type",
            "children", "items", "data", "business-role", "businessRole", "name", "code", "\\u0069d", "leaf", "x",
        ];
        const STRINGS: [&str; 9] = ["\"l1\"", "\" r2 \"", "\"\"", "\"  \"", "\"Contact\"", "\"CONTACT \"", "\"note\"", "\"a\\\"b\"", "\"r\\u0031\""];
        const SCALARS: [&str; 8] = ["7", "-3", "2.5", "1e3", "true", "false", "null", "18446744073709551615"];
        match rng.below(if depth == 0 { 3 } else { 6 }) {
            0 => out.push_str(*rng.pick(&STRINGS)),
            1 => out.push_str(*rng.pick(&SCALARS)),
            2 => out.push_str(*rng.pick(&STRINGS)),
            3 | 4 => {
                // Most objects start as a contact would, for the keys after them to contradict.
                out.push_str(if rng.percent(60) { r#"{"id":"l","resourceId":"r""# } else { "{" });
                for i in 0..rng.below(7) {
                    if i > 0 || out.ends_with('"') {
                        out.push(',');
                    }
                    out.push('"');
                    out.push_str(*rng.pick(&KEYS));
                    out.push_str("\":");
                    random_json(rng, depth - 1, out);
                }
                out.push('}');
            }
            _ => {
                out.push('[');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    random_json(rng, depth - 1, out);
                }
                out.push(']');
            }
        }
    }

    #[test]
    fn reads_every_body_as_the_whole_json_tree_does() {
        let mut rng = crate::simulation::rng::Rng::new(16);
        let mut contacts = 0;
        for _ in 0..20_000 {
            let mut body = String::new();
            random_json(&mut rng, 5, &mut body);
            if rng.percent(70) {
                body = format!("[{body}]");
            }
            let expected = listing_of_tree(body.as_bytes());
            assert_eq!(parse_listing(body.as_bytes()), expected, "{body}");
            contacts += expected.map_or(0, |l| l.contacts.len());
        }
        assert!(contacts > 1_000, "the bodies held only {contacts} contacts");
    }

    /// What a whole JSON tree refuses anywhere in a body, the listing refuses too, also where it
    /// reads nothing.
    #[test]
    fn a_body_is_json_whole_or_not_at_all() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let bad: [&[u8]; 6] = [br#""\ud800""#, b"1e400", b"\"\xff\xfe\"", br#""\q""#, deep.as_bytes(), b"[1,]"];
        // Where the listing reads nothing: an unknown key, a child that is no node, an unknown
        // key of a type object, a body that is no array.
        let around: [(&[u8], &[u8]); 4] = [
            (br#"[{"id":"l","resourceId":"r","x":"#, b"}]"),
            (br#"[{"id":"l","children":["#, b"]}]"),
            (br#"[{"id":"l","type":{"name":"contact","x":"#, b"}}]"),
            (br#"{"x":"#, b"}"),
        ];
        for fragment in bad {
            for (before, after) in around {
                let body = [before, fragment, after].concat();
                let shown = String::from_utf8_lossy(&body);
                assert_eq!(listing_of_tree(&body), Err(ResponseError::NotJson), "{shown}");
                assert_eq!(parse_listing(&body), Err(ResponseError::NotJson), "{shown}");
            }
        }
    }

    #[test]
    fn rejects_bodies_that_are_not_listings() {
        assert_eq!(parse_listing(b"<html>login</html>"), Err(ResponseError::NotJson));
        assert_eq!(
            parse_listing(br#"{"exceptionMessage":"x"}"#),
            Err(ResponseError::NotAnArray("an object"))
        );
        assert_eq!(parse_listing(b"[]").unwrap(), CrewListing::default());
    }

    #[test]
    fn added_line_id_prefers_the_root_line() {
        let body = br#"{"addedResourceLineIds":["acc","x"],"affectedRootLineIds":["root"],"addedNoteLineId":null}"#;
        assert_eq!(parse_added_line_id(body).as_deref(), Some("root"));
        assert_eq!(parse_added_line_id(br#"{"addedResourceLineIds":["a"]}"#).as_deref(), Some("a"));
        assert_eq!(parse_added_line_id(br#"{"data":{"lineItemId":"d"}}"#).as_deref(), Some("d"));
        assert_eq!(parse_added_line_id(br#"{"addedResourceLineIds":[]}"#), None);
        assert_eq!(parse_added_line_id(b""), None);
    }

    #[test]
    fn recognises_the_hourly_budget_body() {
        let body = br#"{"exceptionMessage":"Maximum API request limit of 2,000 reached for this hour.","httpStatusCode":429}"#;
        assert!(is_budget_exhausted(body));
        assert!(!is_budget_exhausted(br#"{"exceptionMessage":"Too many concurrent requests"}"#));
    }
}
