//! Reading Flex's JSON: the row-data tree of a crew call and the add-resource answer.
//!
//! No public capture shows a crew-call row, so every key that a
//! public client reads is accepted here, and anything that cannot be recognised as a contact is
//! left alone rather than guessed at: a node we cannot classify is never a candidate for deletion.

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

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
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

fn line_type(node: &Value) -> Option<String> {
    ["managedResourceLineItemType", "type"].iter().find_map(|key| match node.get(*key) {
        Some(Value::String(s)) => Some(s.trim().to_ascii_lowercase()),
        Some(Value::Object(o)) => o
            .get("name")
            .or_else(|| o.get("code"))
            .and_then(Value::as_str)
            .map(|s| s.trim().to_ascii_lowercase()),
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

fn business_role(node: &Value) -> Option<String> {
    first_id(
        node,
        &["business-role", "business-role.id", "business-role.data", "businessRole", "businessRole.id"],
    )
}

/// Parses a `GET /line-item/{el}/row-data/` body: a bare array of rows nested through `children`.
pub fn parse_listing(body: &[u8]) -> Result<CrewListing, ResponseError> {
    let root: Value = serde_json::from_slice(body).map_err(|_| ResponseError::NotJson)?;
    let rows = match &root {
        Value::Array(rows) => rows.iter().collect::<Vec<_>>(),
        other => return Err(ResponseError::NotAnArray(kind_of(other))),
    };
    let mut listing = CrewListing::default();
    let mut stack = rows;
    stack.reverse();
    while let Some(node) = stack.pop() {
        let kids = children(node);
        let line_id = first_id(node, &["id", "lineItemId", "lineItem.id"]);
        let resource_id = first_id(node, &["resourceId", "resource.id", "resource.resourceId"]);
        let kind = line_type(node);
        let is_contact = match kind.as_deref() {
            Some("contact") => true,
            // An untyped leaf that names a resource is how some tenants show a crew row; an
            // untyped node with children is a container and never a contact.
            None => kids.is_empty() && resource_id.is_some(),
            Some(_) => false,
        };
        match (line_id, resource_id, is_contact) {
            (Some(line_id), Some(resource_id), true) => listing.contacts.push(FlexContact {
                line_id,
                resource_id,
                business_role: business_role(node),
            }),
            (Some(line_id), _, _) => listing.other_line_ids.push(line_id),
            (None, _, _) => {}
        }
        stack.extend(kids.into_iter().rev());
    }
    Ok(listing)
}

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
