//! The simulator behaves as Flex is known to: these tests talk HTTP to it directly.

use flex_sync_pg_test::harness::{Sim, SIM_TOKEN};
use serde_json::{json, Value};

struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    fn new(sim: &Sim) -> Http {
        let config = ureq::Agent::config_builder().http_status_as_error(false).build();
        Http { agent: config.into(), base: format!("http://{}", sim.server.addr) }
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.agent.get(&format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("X-Auth-Token", t);
        }
        let mut resp = req.call().unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
    }

    fn post(&self, path: &str, content_type: &str, body: &str) -> (u16, String) {
        let mut resp = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("X-Auth-Token", SIM_TOKEN)
            .content_type(content_type)
            .send(body)
            .unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
    }

    fn delete(&self, path: &str, form: Option<&str>) -> u16 {
        let url = format!("{}{path}", self.base);
        let resp = match form {
            Some(body) => self
                .agent
                .delete(&url)
                .header("X-Auth-Token", SIM_TOKEN)
                .force_send_body()
                .content_type("application/x-www-form-urlencoded")
                .send(body),
            None => self.agent.delete(&url).header("X-Auth-Token", SIM_TOKEN).call(),
        };
        resp.unwrap().status().as_u16()
    }
}

const FORM: &str = "application/x-www-form-urlencoded; charset=UTF-8";
const ADD_FORM: &str = "resourceParentId=&managedResourceLineItemType=contact&quantity=1&parentLineItemId=&nextSiblingId=";

fn add(http: &Http, element: &str, resource: &str) -> String {
    let (status, body) = http.post(&format!("/f5/api/line-item/{element}/add-resource/{resource}"), FORM, ADD_FORM);
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["addedNoteLineId"], Value::Null);
    assert_eq!(body["affectedRootLineIds"], body["addedResourceLineIds"]);
    body["addedResourceLineIds"][0].as_str().unwrap().to_string()
}

fn listing(http: &Http, element: &str) -> Value {
    let (status, body) = http.get(
        &format!("/f5/api/line-item/{element}/row-data/?_dc=1&codeList=contact&codeList=business-role&node=root"),
        Some(SIM_TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn auth_prefix_and_unknown_methods() {
    let sim = Sim::start();
    let http = Http::new(&sim);
    let (status, body) = http.get("/f5/api/line-item/e/row-data/?codeList=contact", None);
    assert_eq!(status, 401);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["exceptionMessage"].is_string());
    assert_eq!(http.get("/f5/api/line-item/e/row-data/?codeList=contact", Some("wrong")).0, 401);
    let (status, body) = http.get("/api/line-item/e/row-data/?codeList=contact", Some(SIM_TOKEN));
    assert_eq!(status, 403);
    assert!(body.contains("<html>") || body.contains("<!DOCTYPE html>"));
    assert_eq!(http.get("/f5/api/line-item/e/add-resource/r", Some(SIM_TOKEN)).0, 405);
}

#[test]
fn add_list_role_and_delete_as_documented() {
    let sim = Sim::start();
    let http = Http::new(&sim);
    let line = add(&http, "el", "res-1");
    // Query-string parameters work too, and adding twice makes two lines (not idempotent).
    let (status, _) = http.post("/f5/api/line-item/el/add-resource/res-1?managedResourceLineItemType=contact&quantity=1", "text/plain", "");
    assert_eq!(status, 200);
    let rows = listing(&http, "el");
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["id"], line.as_str());
    assert_eq!(rows[0]["resourceId"], "res-1");
    assert_eq!(rows[0]["managedResourceLineItemType"], "contact");
    assert_eq!(rows[0]["business-role"], Value::Null);
    // Without the trailing slash, with an empty codeList, without codeList.
    assert_eq!(http.get("/f5/api/line-item/el/row-data?codeList=contact", Some(SIM_TOKEN)).0, 200);
    assert_eq!(http.get("/f5/api/line-item/el/row-data/?codeList=", Some(SIM_TOKEN)).1, "[]");
    assert_eq!(http.get("/f5/api/line-item/el/row-data/?node=root", Some(SIM_TOKEN)).0, 400);

    let role = json!({"lineItemId": line, "fieldType": "business-role", "payloadValue": "role-x"}).to_string();
    assert_eq!(http.post("/f5/api/line-item/el/row-data/", "application/json", &role).0, 200);
    assert_eq!(listing(&http, "el")[0]["business-role"], "role-x");
    let foreign = json!({"lineItemId": "nope", "fieldType": "business-role", "payloadValue": "r"}).to_string();
    assert_eq!(http.post("/f5/api/line-item/el/row-data/", "application/json", &foreign).0, 404);

    assert_eq!(http.delete(&format!("/f5/api/line-item/{line}"), None), 204);
    assert_eq!(http.delete(&format!("/f5/api/line-item/{line}"), None), 404);
    assert_eq!(listing(&http, "el").as_array().unwrap().len(), 1);
}

#[test]
fn bulk_delete_accepts_only_the_configured_key() {
    let sim = Sim::start();
    let http = Http::new(&sim);
    let a = add(&http, "el", "r1");
    let b = add(&http, "el", "r2");
    assert_eq!(http.delete("/f5/api/line-item", Some(&format!("ids={a}&ids={b}"))), 400);
    assert_eq!(http.delete("/f5/api/line-item", Some(&format!("lineItemIds={a}&lineItemIds={b}"))), 204);
    assert_eq!(listing(&http, "el"), json!([]));
}

#[test]
fn switches_change_the_uncertain_behaviours() {
    let sim = Sim::start();
    let http = Http::new(&sim);
    sim.set_config(json!({"add_response": "empty", "row_shape": "nested", "group_rows": true,
                          "missing_line_type": "reject", "delete_status": 200}));
    let (status, body) = http.post("/f5/api/line-item/el/add-resource/r1", FORM, ADD_FORM);
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(http.post("/f5/api/line-item/el/add-resource/r1", "text/plain", "").0, 400);
    let rows = listing(&http, "el");
    assert_eq!(rows[0]["leaf"], false, "one container group");
    let child = &rows[0]["children"][0];
    assert_eq!(child["resource"]["id"], "r1");
    assert_eq!(http.delete(&format!("/f5/api/line-item/{}", child["id"].as_str().unwrap()), None), 200);
    sim.set_config(json!({"add_params": "query"}));
    let (status, body) = http.post("/f5/api/line-item/el/add-resource/r1", FORM, ADD_FORM);
    assert_eq!(status, 200, "missing_line_type defaults to contact again: {body}");
}

#[test]
fn the_hourly_budget_answers_the_observed_429() {
    let sim = Sim::start();
    let http = Http::new(&sim);
    sim.set_config(json!({"hourly_budget": 3}));
    for _ in 0..3 {
        listing(&http, "el");
    }
    let (status, body) = http.get("/f5/api/line-item/el/row-data/?codeList=contact", Some(SIM_TOKEN));
    assert_eq!(status, 429);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"exceptionMessage": "Maximum API request limit of 3 reached for this hour.", "httpStatusCode": 429})
    );
}

#[test]
fn more_than_thirty_requests_in_flight_are_refused() {
    let sim = Sim::start();
    sim.set_faults(json!([{"endpoint": "list", "kind": "latency", "ms": 3000}]));
    let base = format!("http://{}", sim.server.addr);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(36));
    let handles: Vec<_> = (0..36)
        .map(|_| {
            let (base, barrier) = (base.clone(), barrier.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                barrier.wait();
                agent
                    .get(&format!("{base}/f5/api/line-item/el/row-data/?codeList=contact"))
                    .header("X-Auth-Token", SIM_TOKEN)
                    .call()
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(refused, 6, "{statuses:?}");
}

#[test]
fn faults_drop_hang_garbage_html_and_oversized() {
    let sim = Sim::start();
    let http = Http::new(&sim);
    let short: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_millis(300)))
        .build()
        .into();
    let add_url = format!("http://{}/f5/api/line-item/el/add-resource/r1", sim.server.addr);
    sim.set_faults(json!([{"endpoint": "add", "kind": "drop_after_apply", "times": 1}]));
    let dropped = short.post(&add_url).header("X-Auth-Token", SIM_TOKEN).content_type(FORM).send(ADD_FORM);
    assert!(dropped.is_err(), "the connection closes without an answer");
    assert_eq!(listing(&http, "el").as_array().unwrap().len(), 1, "but the add was applied");

    sim.set_faults(json!([{"endpoint": "list", "kind": "hang", "ms": 1000, "times": 1}]));
    let hung = short.get(&format!("http://{}/f5/api/line-item/el/row-data/?codeList=contact", sim.server.addr))
        .header("X-Auth-Token", SIM_TOKEN)
        .call();
    assert!(matches!(hung, Err(ureq::Error::Timeout(_))), "{hung:?}");

    sim.set_faults(json!([{"endpoint": "list", "kind": "garbage", "times": 1},
                          {"endpoint": "list", "kind": "html", "times": 1},
                          {"endpoint": "list", "kind": "status", "status": 503, "times": 1}]));
    let (status, body) = http.get("/f5/api/line-item/el/row-data/?codeList=contact", Some(SIM_TOKEN));
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err());
    let (status, body) = http.get("/f5/api/line-item/el/row-data/?codeList=contact", Some(SIM_TOKEN));
    assert_eq!(status, 200);
    assert!(body.contains("<html>"));
    assert_eq!(http.get("/f5/api/line-item/el/row-data/?codeList=contact", Some(SIM_TOKEN)).0, 503);

    sim.set_faults(json!([{"endpoint": "list", "kind": "oversized", "bytes": 3_000_000}]));
    let (status, body) = http.get("/f5/api/line-item/el/row-data/?codeList=contact", Some(SIM_TOKEN));
    assert_eq!(status, 200);
    assert!(body.len() >= 3_000_000);
    let calls = sim.calls();
    assert_eq!(calls["add"], 1);
    assert!(calls["list"] >= 5);
}
