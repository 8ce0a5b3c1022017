//! The model Flex: one crew call's contacts, the endpoints the sync calls with their documented
//! answers, and the hourly budget. Every contact knows who made it, which the sync never sees:
//! the invariants judge the sync by it.

use serde_json::{json, Value};

use crate::endpoints::FlexCall;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Sync,
    Hand,
    /// Added by a call of a backend killed before it landed (see the module's notes).
    LateAdd,
}

#[derive(Debug, Clone)]
pub struct Contact {
    pub line: String,
    pub resource: String,
    pub role: Option<String>,
    pub origin: Origin,
}

pub struct ModelFlex {
    pub element: String,
    pub contacts: Vec<Contact>,
    next_line: u64,
    /// Calls counted against the hourly budget, and the budget.
    pub calls: u64,
    pub budget: u64,
    /// Whether the tenant accepts the undocumented bulk delete.
    pub bulk_delete: bool,
}

impl ModelFlex {
    pub fn new(element: &str, budget: u64, bulk_delete: bool) -> ModelFlex {
        ModelFlex { element: element.to_string(), contacts: Vec::new(), next_line: 0, calls: 0, budget, bulk_delete }
    }

    pub fn new_contact(&mut self, resource: &str, origin: Origin) -> String {
        self.next_line += 1;
        let line = format!("line-{}", self.next_line);
        self.contacts.push(Contact { line: line.clone(), resource: resource.to_string(), role: None, origin });
        line
    }

    /// The row-data tree: a container holding one leaf per contact.
    pub fn listing_body(&self) -> Vec<u8> {
        let contacts: Vec<Value> = self
            .contacts
            .iter()
            .map(|c| {
                let mut row = json!({"id": c.line, "resourceId": c.resource, "managedResourceLineItemType": "contact"});
                if let Some(role) = &c.role {
                    row["business-role"] = json!(role);
                }
                row
            })
            .collect();
        serde_json::to_vec(&json!([{"id": "crew-call-root", "children": contacts}])).expect("a listing serializes")
    }

    /// Applies a call as Flex does: the success body, or the error status. `add_id` false makes
    /// an add that answers without its line id.
    pub fn apply(&mut self, call: &FlexCall, add_id: bool) -> Result<Vec<u8>, u16> {
        match call {
            FlexCall::ListCrew { element } if *element == self.element => Ok(self.listing_body()),
            FlexCall::AddContact { element, resource } if *element == self.element => {
                let line = self.new_contact(resource, Origin::Sync);
                Ok(if add_id { serde_json::to_vec(&json!({"addedResourceLineIds": [line]})).expect("serializes") } else { b"{}".to_vec() })
            }
            FlexCall::SetRole { line, role, .. } => match self.contacts.iter_mut().find(|c| c.line == *line) {
                Some(contact) => {
                    contact.role = Some(role.clone());
                    Ok(b"{}".to_vec())
                }
                None => Err(404),
            },
            FlexCall::DeleteLine { line } => match self.contacts.iter().position(|c| c.line == *line) {
                Some(at) => {
                    self.contacts.remove(at);
                    Ok(Vec::new())
                }
                None => Err(404),
            },
            FlexCall::DeleteLines { lines } if self.bulk_delete => {
                self.contacts.retain(|c| !lines.contains(&c.line));
                Ok(Vec::new())
            }
            FlexCall::DeleteLines { .. } => Err(400),
            _ => Err(404),
        }
    }

    pub fn contact(&self, line: &str) -> Option<&Contact> {
        self.contacts.iter().find(|c| c.line == line)
    }
}
