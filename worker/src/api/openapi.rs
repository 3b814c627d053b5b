//! `GET /openapi.json`, generated from the request and response types, and `GET /docs`, an
//! interactive page over it.

use axum::Json;
use axum::response::Html;
use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::configure::ConfigureResponse;
use super::error::ErrorEnvelope;
use super::meta::ModelList;
use super::request::ChatCompletionRequest;
use super::response::ChatCompletion;
use crate::config::{MAX_BUDGET_LIMIT, WorkerConfig};

/// The OpenAPI 3.1 document of the worker.
pub fn document() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
    }));
    let mut schema = |f: fn(&mut SchemaGenerator) -> schemars::Schema| f(&mut generator).to_value();
    let chat_req = schema(|g| g.subschema_for::<ChatCompletionRequest>());
    let chat_resp = schema(|g| g.subschema_for::<ChatCompletion>());
    let config = schema(|g| g.subschema_for::<WorkerConfig>());
    let config_resp = schema(|g| g.subschema_for::<ConfigureResponse>());
    let models = schema(|g| g.subschema_for::<ModelList>());
    let error = schema(|g| g.subschema_for::<ErrorEnvelope>());
    let schemas = generator.take_definitions(true);

    let json_body =
        |s: &Value| json!({"required": true, "content": {"application/json": {"schema": s}}});
    let ok = |desc: &str, s: &Value| json!({"description": desc, "content": {"application/json": {"schema": s}}});
    let err = |desc: &str| json!({"description": desc, "content": {"application/json": {"schema": error}}});
    let plain = |desc: &str| json!({"description": desc});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "inferscale worker",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "OpenAI-compatible inference-time scaling: each request spends a budget of upstream calls \
                            (self-consistency voting or best-of-n with an LLM judge) and returns the best answer."
        },
        "paths": {
            "/v1/chat/completions": {"post": {
                "summary": "Chat completion with inference-time scaling",
                "description": "Any OpenAI chat request plus `budget` (or the `X-ITS-Budget` header, which wins). \
                                Unlisted fields are forwarded to the upstream unchanged. `stream: true` returns \
                                server-sent `chat.completion.chunk` events of the selected answer.",
                "parameters": [{"name": "X-ITS-Budget", "in": "header", "required": false,
                                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_BUDGET_LIMIT}}],
                "requestBody": json_body(&chat_req),
                "responses": {
                    "200": ok("The selected answer (JSON, or an SSE stream when `stream` is true)", &chat_resp),
                    "400": err("Invalid request"), "401": err("Missing or wrong API key"),
                    "404": err("Unknown model"), "413": err("Body too large"),
                    "429": err("Every candidate was rate-limited upstream"),
                    "502": err("The upstream failed for every candidate"),
                    "503": err("Not configured yet"), "504": err("Request deadline passed")
                }
            }},
            "/configure": {"post": {
                "summary": "Configure the model, algorithm and judge",
                "description": "Validated fully before anything changes; a valid configuration replaces the old one \
                                atomically for new requests. Unknown fields are rejected.",
                "requestBody": json_body(&config),
                "responses": {"200": ok("Applied", &config_resp), "400": err("Invalid configuration"),
                              "401": err("Missing or wrong admin token"), "403": err("Configuration is read-only")}
            }},
            "/v1/models": {"get": {"summary": "The configured model", "responses": {"200": ok("Model list", &models)}}},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": plain("The process serves HTTP")}}},
            "/ready": {"get": {"summary": "Readiness", "responses": {"200": plain("Configured"), "503": plain("Not configured yet")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": plain("Text exposition format")}}}
        },
        "components": {"schemas": schemas}
    })
}

pub async fn openapi_json() -> Json<Value> {
    Json(document())
}

/// An interactive reference rendered in the browser from `/openapi.json` (the renderer's script
/// comes from a CDN, as FastAPI's `/docs` does; the document itself is local).
pub async fn docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>inferscale worker API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
<noscript>The machine-readable API description is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script id="api-reference" data-url="/openapi.json"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference@1"></script>
</body>
</html>"#,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_reference_resolves() {
        let doc = super::document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (i, _) in text.match_indices("#/components/schemas/") {
            let name: String = text[i + 21..].chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "dangling $ref to {name}");
        }
        assert!(
            schemas.contains_key("WorkerConfig") && schemas.contains_key("ChatCompletionRequest")
        );
    }

    /// Clients generating code from `/openapi.json` get typed access to `metadata`.
    #[test]
    fn the_response_metadata_is_documented() {
        let doc = super::document();
        let schemas = &doc["components"]["schemas"];
        let metadata = &schemas["ChatCompletion"]["properties"]["metadata"];
        assert!(
            metadata
                .to_string()
                .contains("#/components/schemas/Metadata"),
            "ChatCompletion.metadata does not reference the Metadata schema: {metadata}"
        );
        let properties = schemas["Metadata"]["properties"]
            .as_object()
            .expect("a Metadata schema with properties");
        for key in [
            "algorithm",
            "all_responses",
            "selected_index",
            "response_counts",
            "tool_name_counts",
            "vote_space",
            "agreement",
            "scores",
            "judge",
            "failed_candidates",
            "candidate_errors",
        ] {
            assert!(properties.contains_key(key), "Metadata lacks {key}");
        }
        let required = schemas["Metadata"]["required"].to_string();
        for key in [
            "algorithm",
            "all_responses",
            "selected_index",
            "failed_candidates",
        ] {
            assert!(required.contains(key), "Metadata should require {key}");
        }
        let judge = schemas["JudgeMetadata"]["properties"]
            .as_object()
            .expect("a JudgeMetadata schema with properties");
        for key in [
            "mode",
            "criterion",
            "distinct_candidates",
            "calls",
            "failures",
            "error",
            "fallback",
        ] {
            assert!(judge.contains_key(key), "JudgeMetadata lacks {key}");
        }
    }
}
