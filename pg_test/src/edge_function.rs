//! A faithful replica of the Edge Function `sync-flex-crew-for-job` that flex_sync replaces,
//! hazards included (tests/hazards.rs has one test per hazard), so the storm can run it side by side with flex_sync against the
//! same database and simulator. Each statement autocommits; there is no lock and no retry, and
//! errors are swallowed where the original swallows them. Do not fix anything here.

use postgres::Client;
use serde_json::{json, Value};

pub struct EdgeFunction {
    agent: ureq::Agent,
    base: String,
    token: String,
}

const SEVEN_CODES: &str = "codeList=contact&codeList=business-role&codeList=pickup-date&codeList=return-date&codeList=notes&codeList=quantity&codeList=status";
const ADD_FORM: &str = "resourceParentId=&managedResourceLineItemType=contact&quantity=1&parentLineItemId=&nextSiblingId=";

impl EdgeFunction {
    pub fn new(base: &str, token: &str) -> EdgeFunction {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        EdgeFunction { agent, base: base.to_string(), token: token.to_string() }
    }

    fn request(&self, method: &str, path: &str, form: Option<&str>) -> Option<Value> {
        let url = format!("{}{path}", self.base);
        let with = |r| self.headers(r);
        let with_body = |r| self.headers(r);
        let result = match (method, form) {
            ("GET", _) => with(self.agent.get(&url)).call(),
            ("DELETE", None) => with(self.agent.delete(&url)).call(),
            ("DELETE", Some(body)) => with(self.agent.delete(&url))
                .force_send_body()
                .content_type("application/x-www-form-urlencoded; charset=UTF-8")
                .send(body),
            (_, None) => with_body(self.agent.post(&url)).send_empty(),
            (_, Some(body)) => with_body(self.agent.post(&url))
                .content_type("application/x-www-form-urlencoded; charset=UTF-8")
                .send(body),
        };
        let mut response = result.ok()?;
        let ok = response.status().is_success();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        if !ok {
            return None;
        }
        Some(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn headers<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        request
            .header("X-Auth-Token", &self.token)
            .header("X-Requested-With", "XMLHttpRequest")
            .header("X-API-Client", "flex5-desktop")
            .header("Accept", "*/*")
    }

    /// The function's POST body is `{job_id, departments?}`; this returns its JSON response.
    pub fn sync(&self, db: &mut Client, job_id: &str, departments: Option<&[&str]>) -> Value {
        let departments: Vec<String> = match departments {
            Some(list) => list
                .iter()
                .map(|d| d.to_lowercase())
                .filter(|d| ["sound", "lights", "video"].contains(&d.as_str()))
                .collect(),
            None => {
                let found: Vec<String> = db
                    .query("SELECT DISTINCT department FROM flex_crew_calls WHERE job_id = $1::text::uuid", &[&job_id])
                    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                    .unwrap_or_default();
                if found.is_empty() { vec!["sound".into(), "lights".into()] } else { found }
            }
        };
        let mut summary = serde_json::Map::new();
        for d in departments {
            summary.insert(d.clone(), self.sync_department(db, job_id, &d));
        }
        json!({"ok": true, "job_id": job_id, "summary": summary})
    }

    fn sync_department(&self, db: &mut Client, job_id: &str, d: &str) -> Value {
        let Ok(Some(crew)) = db.query_opt(
            "SELECT id::text, flex_element_id::text FROM flex_crew_calls WHERE job_id = $1::text::uuid AND department = $2",
            &[&job_id, &d],
        ) else {
            return json!({"note": "no crew call mapping"});
        };
        let (crew_id, el): (String, String) = (crew.get(0), crew.get(1));
        // Desired: no status filter; role column or profile department.
        let desired: Vec<(String, String, Option<String>)> = db
            .query(
                &format!(
                    "SELECT ja.technician_id::text, p.flex_resource_id, ja.{d}_role FROM job_assignments ja
                     JOIN profiles p ON p.id = ja.technician_id
                     WHERE ja.job_id = $1::text::uuid AND coalesce(p.flex_resource_id, '') <> ''
                       AND (ja.{d}_role IS NOT NULL OR p.department = $2)"
                ),
                &[&job_id, &d],
            )
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
            .unwrap_or_default();
        let current: Vec<(String, String)> = db
            .query(
                "SELECT technician_id::text, flex_line_item_id::text FROM flex_crew_assignments WHERE crew_call_id = $1::text::uuid",
                &[&crew_id],
            )
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default();

        // Prune stale rows: a failed GET makes every row stale (the hazard).
        let present: Vec<String> = self
            .request("GET", &format!("/line-item/{el}/row-data/?_dc=1&codeList=contact&node=root"), None)
            .and_then(|v| v.as_array().cloned())
            .map(|rows| rows.iter().filter_map(|r| r["id"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let (fresh, stale): (Vec<_>, Vec<_>) = current.into_iter().partition(|(_, line)| present.contains(line));
        for (tech, _) in &stale {
            let _ = db.execute(
                "DELETE FROM flex_crew_assignments WHERE crew_call_id = $1::text::uuid AND technician_id = $2::text::uuid",
                &[&crew_id, tech],
            );
        }
        let fresh_techs: Vec<&String> = fresh.iter().map(|(t, _)| t).collect();
        let desired_techs: Vec<&String> = desired.iter().map(|(t, _, _)| t).collect();
        let (mut added, mut removed, mut roles_set, mut failed_adds) = (0, 0, 0, 0);
        let mut errors = Vec::new();
        for (tech, resource, role) in desired.iter().filter(|(t, _, _)| !fresh_techs.contains(&t)) {
            let path = format!("/line-item/{el}/add-resource/{resource}");
            let mut line = self.request("POST", &path, None).as_ref().and_then(line_id_of);
            if line.is_none() {
                line = self.request("POST", &path, Some(ADD_FORM)).as_ref().and_then(line_id_of);
            }
            let Some(line) = line else {
                failed_adds += 1;
                errors.push(format!("Add failed for tech {tech}"));
                continue;
            };
            let _ = db.execute(
                "INSERT INTO flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id)
                 VALUES ($1::text::uuid, $2::text::uuid, $3::text::uuid)",
                &[&crew_id, tech, &line],
            );
            added += 1;
            if let Some(role_id) = role.as_deref().and_then(|r| live_app_role_id(d, r)) {
                let body = json!({"lineItemId": line, "fieldType": "business-role", "payloadValue": role_id});
                let url = format!("{}/line-item/{el}/row-data/", self.base);
                let ok = self
                    .agent
                    .post(&url)
                    .header("X-Auth-Token", &self.token)
                    .send_json(&body)
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    roles_set += 1;
                }
            }
        }
        for (tech, line) in fresh.iter().filter(|(t, _)| !desired_techs.contains(&t)) {
            let _ = self.request("DELETE", &format!("/line-item/{line}"), None);
            let _ = db.execute(
                "DELETE FROM flex_crew_assignments WHERE crew_call_id = $1::text::uuid AND technician_id = $2::text::uuid",
                &[&crew_id, tech],
            );
            removed += 1;
        }
        removed += self.delete_extras(&el, &desired);
        json!({"added": added, "removed": removed, "kept": desired.len() - added.min(desired.len()),
               "rolesSet": roles_set, "failedAdds": failed_adds, "desired_count": desired.len(),
               "current_count": fresh.len(), "errors": errors})
    }

    /// Step 8: the five-endpoint scan, then a bulk delete with three key guesses, then singles.
    fn delete_extras(&self, el: &str, desired: &[(String, String, Option<String>)]) -> usize {
        let attempts = [
            format!("/element/{el}/line-items?_dc=1&{SEVEN_CODES}&node=root"),
            format!("/line-item/{el}"),
            format!("/line-item/{el}/children?_dc=1&{SEVEN_CODES}&node=root"),
            format!("/line-item/{el}/row-data/?_dc=1&{SEVEN_CODES}&node=root"),
            format!("/line-item/{el}/row-data/findRowData?{SEVEN_CODES}"),
        ];
        let mut items: Vec<Value> = Vec::new();
        for (i, path) in attempts.iter().enumerate() {
            let Some(body) = self.request("GET", path, None) else { continue };
            let found = match i {
                0 => flatten(unwrap_items(&body)),
                1 => body.get("children").or(body.get("lineItems")).and_then(Value::as_array).cloned().unwrap_or_default(),
                2 => unwrap_items(&body),
                // Attempts 4 and 5 keep only ids: no resource, so extras only with nobody desired.
                _ => unwrap_items(&body).iter().map(|r| json!({"id": r["id"]})).collect(),
            };
            if !found.is_empty() {
                items = found;
                break;
            }
        }
        let mut by_resource: std::collections::HashMap<String, String> = Default::default();
        let mut kept_ids = Vec::new();
        for item in &items {
            let Some(li) = item["id"].as_str().or(item["lineItemId"].as_str()) else { continue };
            let kind = item["managedResourceLineItemType"].as_str().or(item["type"].as_str()).map(str::to_lowercase);
            if kind.as_deref().is_some_and(|k| k != "contact") {
                continue;
            }
            kept_ids.push(li.to_string());
            if let Some(res) = item["resourceId"].as_str().or(item["resource"]["id"].as_str()) {
                by_resource.insert(res.to_string(), li.to_string());
            }
        }
        let extras: Vec<String> = if desired.is_empty() {
            kept_ids
        } else {
            by_resource
                .into_iter()
                .filter(|(res, _)| !desired.iter().any(|(_, r, _)| r == res))
                .map(|(_, li)| li)
                .collect()
        };
        if extras.is_empty() {
            return 0;
        }
        let bulk_ok = ["lineItemIds", "lineItemId", "ids"].iter().any(|key| {
            let form = extras.iter().map(|id| format!("{key}={id}")).collect::<Vec<_>>().join("&");
            self.request("DELETE", "/line-item", Some(&form)).is_some()
        });
        if !bulk_ok {
            for id in &extras {
                let _ = self.request("DELETE", &format!("/line-item/{id}"), None);
            }
        }
        extras.len()
    }
}

fn unwrap_items(body: &Value) -> Vec<Value> {
    body.as_array()
        .or(body["data"]["items"].as_array())
        .or(body["items"].as_array())
        .or(body["results"].as_array())
        .cloned()
        .unwrap_or_default()
}

fn flatten(items: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack = items;
    while let Some(item) = stack.pop() {
        for key in ["children", "items"] {
            if let Some(kids) = item[key].as_array() {
                stack.extend(kids.iter().cloned());
            }
        }
        out.push(item);
    }
    out
}

fn line_id_of(body: &Value) -> Option<String> {
    [&body["id"], &body["lineItemId"], &body["data"]["id"], &body["data"]["lineItemId"], &body["addedResourceLineIds"][0]]
        .iter()
        .find_map(|v| v.as_str().map(str::to_string))
}

/// The live app's tier inference: "-R" anywhere first, so SND-RF-E is a responsable.
fn live_app_role_id(department: &str, code: &str) -> Option<&'static str> {
    if department != "sound" {
        return None;
    }
    if code.contains("-R") {
        Some("2916b300-c515-11ea-a087-2a0a4490a7fb")
    } else if code.contains("-E") {
        Some("b18a5bcc-59fa-4956-917f-0d1816d7d9b3")
    } else if code.contains("-T") {
        Some("2f6cf050-c5c1-11ea-a087-2a0a4490a7fb")
    } else {
        None
    }
}
