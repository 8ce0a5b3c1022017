//! The simulator's Flex: crew calls and their lines, a switch for every behaviour of Flex that
//! could not be confirmed, injected faults, call counters and the shared hourly budget.
//! No HTTP here: `server.rs` maps requests onto these methods.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Switches for the behaviours of Flex that could not be confirmed; each is handled both ways by
/// the sync, and the defaults are the likeliest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Requests a customer may make per hour across all keys (Flex: 2,000).
    pub hourly_budget: u64,
    /// Requests in flight per customer (Flex: 30); beyond it the answer is 429.
    pub max_concurrent: usize,
    /// Where add-resource reads its parameters: "merge" (query and form), "query" or "form".
    pub add_params: String,
    /// Without `managedResourceLineItemType`: "contact" assumes a contact, "reject" answers 400.
    pub missing_line_type: String,
    /// The add-resource answer: "full" (addedResourceLineIds...), "empty" (`{}`) or "odd".
    pub add_response: String,
    /// How a contact row names its resource: "flat" (`resourceId`), "nested" (`resource.id`),
    /// "untyped" (`resourceId` without `managedResourceLineItemType`).
    pub row_shape: String,
    /// Wrap the contacts in one container group node, as a tree.
    pub group_rows: bool,
    /// Row-data without `codeList` answers 400 (an empty `codeList` answers `[]`).
    pub codelist_required: bool,
    /// Status for a business-role update of a line that is not in the element.
    pub role_unknown_line_status: u16,
    /// The one form key bulk delete accepts; others answer 400.
    pub bulk_delete_key: String,
    /// Success status of a single delete (200 or 204).
    pub delete_status: u16,
    /// Status of a single delete of an unknown line.
    pub delete_unknown_status: u16,
    /// Paths without the `/f5` prefix answer 403 with an HTML page.
    pub require_f5_prefix: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            hourly_budget: 2_000,
            max_concurrent: 30,
            add_params: "merge".into(),
            missing_line_type: "contact".into(),
            add_response: "full".into(),
            row_shape: "flat".into(),
            group_rows: false,
            codelist_required: true,
            role_unknown_line_status: 404,
            bulk_delete_key: "lineItemIds".into(),
            delete_status: 204,
            delete_unknown_status: 404,
            require_f5_prefix: true,
        }
    }
}

/// The Flex endpoints a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    List,
    Add,
    Role,
    Delete,
    BulkDelete,
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// Answer with this status; with `apply` the call takes effect first (a gateway error after
    /// the write).
    Status {
        status: u16,
        #[serde(default)]
        apply: bool,
    },
    /// Wait, then answer normally.
    Latency { ms: u64 },
    /// Wait, then close the connection without an answer (past the client's timeout).
    Hang { ms: u64 },
    /// Apply the call, then close the connection without an answer.
    DropAfterApply,
    /// Apply the call, then answer 200 with a body that is not JSON.
    Garbage,
    /// Answer 200 with an HTML login page, applying nothing.
    Html,
    /// Answer 200 with an endless-looking JSON body of this many bytes, applying nothing.
    Oversized { bytes: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    pub endpoint: Endpoint,
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many matching calls it affects; None: every one.
    #[serde(default)]
    pub times: Option<u32>,
    /// Matching calls to let through before it starts.
    #[serde(default)]
    pub after: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Line {
    pub id: String,
    pub resource_id: String,
    pub business_role: Option<String>,
    /// "api" for lines made through add-resource, "hand" for lines seeded as a person would.
    pub origin: String,
}

#[derive(Default)]
pub struct SimState {
    pub token: String,
    pub config: SimConfig,
    /// Element id to its contact lines, in the order Flex would list them.
    pub elements: BTreeMap<String, Vec<Line>>,
    pub faults: Vec<Fault>,
    pub calls: BTreeMap<Endpoint, u64>,
    pub budget_used: u64,
    pub budget_window: Option<Instant>,
    pub in_flight: usize,
    /// The most requests ever in flight at once.
    pub peak_in_flight: usize,
    next_id: u64,
}

/// What the server should do with a request after the model had its say.
pub enum Reply {
    Json(u16, Value),
    Empty(u16),
    Html(u16),
}

pub fn flex_error(status: u16, message: &str) -> Reply {
    Reply::Json(status, json!({"exceptionMessage": message, "httpStatusCode": status}))
}

impl SimState {
    pub fn new(token: &str) -> SimState {
        SimState { token: token.to_string(), ..Default::default() }
    }

    pub fn reset(&mut self) {
        let token = std::mem::take(&mut self.token);
        *self = SimState::new(&token);
    }

    /// Counts the call against the hourly budget; Some(reply) when the budget is spent.
    pub fn charge(&mut self, endpoint: Endpoint) -> Option<Reply> {
        *self.calls.entry(endpoint).or_default() += 1;
        let now = Instant::now();
        match self.budget_window {
            Some(start) if now.duration_since(start).as_secs() < 3600 => {}
            _ => {
                self.budget_window = Some(now);
                self.budget_used = 0;
            }
        }
        if self.budget_used >= self.config.hourly_budget {
            return Some(flex_error(
                429,
                &format!(
                    "Maximum API request limit of {} reached for this hour.",
                    group_thousands(self.config.hourly_budget)
                ),
            ));
        }
        self.budget_used += 1;
        None
    }

    /// The fault that applies to this call, if any, consuming one of its uses.
    pub fn take_fault(&mut self, endpoint: Endpoint) -> Option<FaultKind> {
        let index = self.faults.iter().position(|f| f.endpoint == endpoint && f.times != Some(0))?;
        let fault = &mut self.faults[index];
        if fault.after > 0 {
            fault.after -= 1;
            return None;
        }
        if let Some(times) = fault.times.as_mut() {
            *times -= 1;
        }
        Some(fault.kind.clone())
    }

    pub fn add_contact(&mut self, element: &str, resource: &str, params: &HashMap<String, String>) -> Reply {
        match params.get("managedResourceLineItemType").map(String::as_str) {
            Some("contact") => {}
            None if self.config.missing_line_type == "contact" => {}
            None => return flex_error(400, "Required parameter 'managedResourceLineItemType' is not present"),
            Some(other) => return flex_error(400, &format!("Unsupported line item type for a crew call: {other}")),
        }
        let id = self.push_line(element, resource, "api");
        match self.config.add_response.as_str() {
            "empty" => Reply::Json(200, json!({})),
            "odd" => Reply::Json(200, json!({"success": true, "data": null})),
            _ => Reply::Json(
                200,
                json!({"addedResourceLineIds": [id], "affectedRootLineIds": [id],
                       "addedNoteLineId": null, "nonRootClonedLineIds": null}),
            ),
        }
    }

    pub fn list(&self, element: &str, code_list: Option<&[String]>) -> Reply {
        let codes = match code_list {
            None if self.config.codelist_required => {
                return flex_error(
                    400,
                    "Required request parameter 'codeList' for method parameter type List is not present",
                )
            }
            None => Vec::new(),
            Some(codes) => codes.iter().filter(|c| !c.is_empty()).cloned().collect(),
        };
        if code_list.is_some() && codes.is_empty() {
            return Reply::Json(200, json!([]));
        }
        let with_role = codes.iter().any(|c| c == "business-role");
        let rows: Vec<Value> = self
            .elements
            .get(element)
            .map(|lines| lines.iter().map(|l| self.row(l, with_role)).collect())
            .unwrap_or_default();
        if self.config.group_rows && !rows.is_empty() {
            let group = json!({"id": format!("group-{element}"), "leaf": false, "group": true,
                               "name": "Crew", "expanded": true, "children": rows});
            return Reply::Json(200, json!([group]));
        }
        Reply::Json(200, Value::Array(rows))
    }

    fn row(&self, line: &Line, with_role: bool) -> Value {
        let mut row = json!({"id": line.id, "rootLineId": line.id, "leaf": true, "children": null,
                             "quantity": 1, "name": format!("Contact {}", line.resource_id)});
        match self.config.row_shape.as_str() {
            "nested" => {
                row["resource"] = json!({"id": line.resource_id});
                row["managedResourceLineItemType"] = json!("contact");
            }
            "untyped" => row["resourceId"] = json!(line.resource_id),
            _ => {
                row["resourceId"] = json!(line.resource_id);
                row["managedResourceLineItemType"] = json!("contact");
            }
        }
        if with_role {
            row["business-role"] = json!(line.business_role);
        }
        row
    }

    pub fn set_cell(&mut self, element: &str, body: &Value) -> Reply {
        let (Some(line_id), Some(field), Some(value)) = (
            body.get("lineItemId").and_then(Value::as_str),
            body.get("fieldType").and_then(Value::as_str),
            body.get("payloadValue"),
        ) else {
            return flex_error(400, "lineItemId, fieldType and payloadValue are required");
        };
        if field != "business-role" {
            return flex_error(400, &format!("Unknown field type: {field}"));
        }
        let status = self.config.role_unknown_line_status;
        let Some(line) = self.elements.get_mut(element).and_then(|ls| ls.iter_mut().find(|l| l.id == line_id)) else {
            return flex_error(status, &format!("Unable to find line item with id: {line_id}"));
        };
        line.business_role = value.as_str().map(str::to_string);
        Reply::Json(200, json!({}))
    }

    pub fn delete_line(&mut self, line_id: &str) -> Reply {
        if self.remove_line(line_id) {
            Reply::Empty(self.config.delete_status)
        } else {
            flex_error(self.config.delete_unknown_status, &format!("Unable to find line item with id: {line_id}"))
        }
    }

    pub fn bulk_delete(&mut self, form: &[(String, String)]) -> Reply {
        let key = self.config.bulk_delete_key.clone();
        let ids: Vec<&String> = form.iter().filter(|(k, _)| *k == key).map(|(_, v)| v).collect();
        if ids.is_empty() {
            return flex_error(400, &format!("Required request parameter '{key}' is not present"));
        }
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        for id in ids {
            self.remove_line(&id);
        }
        Reply::Empty(self.config.delete_status)
    }

    pub fn remove_line(&mut self, line_id: &str) -> bool {
        for lines in self.elements.values_mut() {
            if let Some(i) = lines.iter().position(|l| l.id == line_id) {
                lines.remove(i);
                return true;
            }
        }
        false
    }

    /// A contact added by a person in the Flex UI.
    pub fn add_by_hand(&mut self, element: &str, resource: &str) -> String {
        self.push_line(element, resource, "hand")
    }

    fn push_line(&mut self, element: &str, resource: &str, origin: &str) -> String {
        self.next_id += 1;
        // UUID-shaped, unique per simulator run.
        let id = format!("5f1e{:04x}-0000-4000-8000-{:012x}", std::process::id() & 0xffff, self.next_id);
        self.elements.entry(element.to_string()).or_default().push(Line {
            id: id.clone(),
            resource_id: resource.to_string(),
            business_role: None,
            origin: origin.into(),
        });
        id
    }

    pub fn snapshot(&self) -> Value {
        json!({
            "elements": self.elements,
            "calls": self.calls,
            "budget_used": self.budget_used,
            "peak_in_flight": self.peak_in_flight,
            "config": self.config,
            "faults": self.faults,
        })
    }
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_body_matches_the_observed_one() {
        let mut s = SimState::new("t");
        s.config.hourly_budget = 2000;
        s.budget_used = 2000;
        s.budget_window = Some(Instant::now());
        let Some(Reply::Json(429, body)) = s.charge(Endpoint::List) else { panic!("expected 429") };
        assert_eq!(body["exceptionMessage"], "Maximum API request limit of 2,000 reached for this hour.");
        assert_eq!(body["httpStatusCode"], 429);
    }

    #[test]
    fn faults_respect_after_and_times() {
        let mut s = SimState::new("t");
        s.faults.push(Fault { endpoint: Endpoint::Add, kind: FaultKind::Html, times: Some(1), after: 1 });
        assert_eq!(s.take_fault(Endpoint::List), None);
        assert_eq!(s.take_fault(Endpoint::Add), None);
        assert_eq!(s.take_fault(Endpoint::Add), Some(FaultKind::Html));
        assert_eq!(s.take_fault(Endpoint::Add), None);
    }
}
