//! The HTTP surface: the OpenAI-compatible endpoints, the referee's report and the admin endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatRequest, CompletionRequest, EMBEDDING_DIMS,
    EmbeddingRequest, Input, StreamOptions, TextChoice, TextCompletion, Usage, chat_prompt_tokens,
    embedding,
};
use crate::clock::NANOS_PER_SEC;
use crate::config::{AccountState, CompletionTokens, RawLimitSpec, parse_limits};
use crate::dialect::{self, Context, Operation};
use crate::messages::{MessageShape, MessagesRequest, VERSION_HEADER};
use crate::meter::Headline;
use crate::reply::{ApiError, json_response};
use crate::responses::{ResponseShape, ResponsesRequest, ResponsesUsage};
use crate::sim::{Account, Cell, Demand, Sim};
use crate::stream::{ChunkKind, SseAnswer};
use crate::tokens::answer;

/// The router of a simulator.
pub(crate) fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models))
        .route("/stats", get(stats))
        .route("/stats/reset", post(reset_stats))
        .route("/admin/reset", post(reset_all))
        .route("/admin/accounts/{account}", post(admin_account))
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&sim),
            count_outside_api,
        ))
        .with_state(sim)
}

/// Counts every request that presents a key (`keyed_requests`) and those of them at
/// a path outside `/v1/` (`outside_api`): what a proxy leaked with an account's key.
async fn count_outside_api(
    State(sim): State<Arc<Sim>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if presented_key(req.headers()).is_some() {
        sim.reject(crate::sim::Rejection::Keyed);
        if !req.uri().path().starts_with("/v1/") {
            sim.reject(crate::sim::Rejection::OutsideApi);
        }
    }
    next.run(req).await
}

/// The text of a chat request's last message (text content and text parts).
fn last_message_text(req: &ChatRequest) -> String {
    match req.messages.last().and_then(|m| m.content.as_ref()) {
        Some(crate::api::Content::Text(t)) => t.clone(),
        Some(crate::api::Content::Parts(parts)) => parts
            .iter()
            .filter_map(|p| p.text.as_deref())
            .collect::<Vec<_>>()
            .join(" "),
        None => String::new(),
    }
}

/// The `echo_bad_request` fault: OpenAI's and vLLM's 400 for an unknown argument,
/// carrying the request's own text.
fn echoed_bad_request(sim: &Sim, account: &Account, model: &str, text: &str) -> Option<Response> {
    let rule = crate::faults::rule_for(
        &sim.config().faults,
        model,
        &account.name,
        account.key.expose(),
    )?;
    if !sim.dice().hit(rule.echo_bad_request) {
        return None;
    }
    sim.reject(crate::sim::Rejection::Echoed);
    let body = json!({"error": {
        "message": format!("Unrecognized request argument supplied: {text}"),
        "type": "invalid_request_error",
        "param": null,
        "code": null,
    }});
    Some(json_response(
        StatusCode::BAD_REQUEST,
        HeaderMap::new(),
        serde_json::to_vec(&body).unwrap_or_default(),
    ))
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::NoRoute(format!("{method} {}", uri.path())).into_response()
}

/// The key from `Authorization: Bearer …`, or from `api-key` (Azure) or `x-api-key` (Anthropic).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if let (Some(scheme), Some(rest)) = (value.get(..7), value.get(7..))
            && scheme.eq_ignore_ascii_case("bearer ")
            && !rest.trim().is_empty()
        {
            return Some(rest.trim());
        }
    }
    ["api-key", "x-api-key"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

fn mask(key: &str) -> String {
    match (key.get(..3), key.len() >= 10) {
        (Some(head), true) => format!("{head}***{}", key.get(key.len() - 3..).unwrap_or("")),
        _ => "***".to_owned(),
    }
}

fn authenticate(sim: &Sim, headers: &HeaderMap) -> Result<Arc<Account>, ApiError> {
    let Some(key) = presented_key(headers) else {
        return Err(ApiError::Unauthorized {
            message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".to_owned(),
            code: None,
        });
    };
    sim.account(key).ok_or_else(|| ApiError::Unauthorized {
        message: format!(
            "Incorrect API key provided: {}. You can find your API key in your sluice-sim configuration.",
            mask(key)
        ),
        code: Some("invalid_api_key"),
    })
}

/// Parses a JSON body; a malformed body or a wrong type is a 400 naming the parameter.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let malformed = || {
        ApiError::bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            None,
            None,
        )
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    let err = match serde_path_to_error::deserialize::<_, T>(&mut *de) {
        Ok(value) => return de.end().map(|()| value).map_err(|_| malformed()),
        Err(err) => err,
    };
    let inner = err.inner();
    if inner.is_syntax() || inner.is_eof() {
        return Err(malformed());
    }
    let text = inner.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text).to_owned();
    let path = err.path().to_string();
    let prefix = if path == "." {
        String::new()
    } else {
        format!("{path}.")
    };
    if let Some(field) = text
        .strip_prefix("missing field `")
        .and_then(|t| t.strip_suffix('`'))
    {
        let param = format!("{prefix}{field}");
        return Err(ApiError::bad_request(
            format!("Missing required parameter: '{param}'."),
            Some(&param),
            None,
        ));
    }
    let param = (path != ".").then_some(path);
    Err(ApiError::bad_request(
        format!(
            "Invalid value for '{}': {text}.",
            param.as_deref().unwrap_or("body")
        ),
        param.as_deref(),
        None,
    ))
}

/// A request, reduced to what metering and answering need.
struct Job {
    operation: Operation,
    prompt: u64,
    max_tokens: Option<u64>,
    stream: bool,
    include_usage: bool,
    /// Embedding inputs (embeddings only).
    inputs: Option<Input>,
}

fn unix_secs(sim: &Sim) -> u64 {
    let clock = sim.clock();
    u64::try_from(clock.unix_nanos_at(clock.now()) / u128::from(NANOS_PER_SEC)).unwrap_or(0)
}

fn context<'a>(
    sim: &Sim,
    cell: &'a Cell,
    operation: Operation,
    request_id: &'a str,
    headline: Headline,
) -> Context<'a> {
    let clock = sim.clock();
    Context {
        dialect: cell.model.dialect,
        model: &cell.model.name,
        operation,
        request_id,
        headline,
        unix_now: clock.unix_nanos_at(clock.now()),
        announce: cell.model.announce,
    }
}

async fn generate(sim: Arc<Sim>, account: Arc<Account>, cell: Arc<Cell>, job: Job) -> Response {
    let model = Arc::clone(&cell.model);
    if let Some(max) = job.max_tokens
        && max > model.max_output_tokens
    {
        return ApiError::bad_request(
            format!(
                "max_tokens is too large: {max}. This model supports at most {} completion tokens, whereas you provided {max}.",
                model.max_output_tokens
            ),
            Some("max_tokens"),
            Some("invalid_value"),
        )
        .counted(&sim);
    }
    let (completion, reserve) = match (job.operation, job.max_tokens, model.completion_tokens) {
        (Operation::Embeddings, _, _) => (0, 0),
        (_, Some(max), _) => (max, max),
        (_, None, CompletionTokens::Fixed(n)) => (n, n),
        (_, None, CompletionTokens::Uniform { min, max }) => (sim.dice().between(min, max), max),
    };
    let demand = Demand {
        prompt: job.prompt,
        reserve_completion: reserve,
        streaming: job.stream,
    };
    let mut ticket = match sim.admit(&account, &cell, demand) {
        Ok(ticket) => ticket,
        Err(refused) => {
            let request_id = dialect::request_id(model.dialect, refused.id);
            let ctx = context(&sim, &cell, job.operation, &request_id, refused.headline);
            let rendered = dialect::render(&refused.failure, &ctx);
            return json_response(rendered.status, rendered.headers, rendered.body.to_bytes());
        }
    };
    let request_id = dialect::request_id(model.dialect, ticket.id);
    let first_byte = model.latency.first_token + ticket.late.slow.unwrap_or(Duration::ZERO);
    let finish_reason = if job.max_tokens == Some(completion) {
        "length"
    } else {
        "stop"
    };
    let created = unix_secs(&sim);
    if job.stream {
        if !first_byte.is_zero() {
            tokio::time::sleep(first_byte).await;
        }
        let ctx = context(&sim, &cell, job.operation, &request_id, ticket.headline);
        let mut headers = dialect::limit_headers(&ctx);
        let error_body = dialect::stream_error_body(&ctx);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let (kind, id) = match job.operation {
            Operation::ChatCompletions => (ChunkKind::Chat, format!("chatcmpl-sim{}", ticket.id)),
            Operation::Responses => (
                ChunkKind::Responses {
                    max_output_tokens: job.max_tokens,
                },
                format!("resp_sim{}", ticket.id),
            ),
            Operation::Messages => (ChunkKind::Messages, format!("msg_sim{}", ticket.id)),
            _ => (ChunkKind::Text, format!("cmpl-sim{}", ticket.id)),
        };
        let answer = SseAnswer::new(
            ticket,
            kind,
            id,
            created,
            model.name.clone(),
            job.include_usage,
            completion,
            model.stream_chunk_tokens,
            model.latency.per_token,
            finish_reason,
            error_body,
        )
        .with_line_ending(model.sse_line_ending);
        return (
            StatusCode::OK,
            headers,
            Body::from_stream(answer.into_stream()),
        )
            .into_response();
    }
    let n = u32::try_from(completion).unwrap_or(u32::MAX);
    let delay = first_byte + model.latency.per_token.saturating_mul(n);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    ticket.sent = completion;
    let headline = ticket.settle();
    let usage = Usage::new(job.prompt, completion);
    let ctx = context(&sim, &cell, job.operation, &request_id, headline);
    let headers = dialect::limit_headers(&ctx);
    let body = match job.operation {
        Operation::ChatCompletions => {
            let id = format!("chatcmpl-sim{}", ticket.id);
            let content = answer(completion);
            serde_json::to_vec(&ChatCompletion {
                id: &id,
                object: "chat.completion",
                created,
                model: &model.name,
                choices: [ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant",
                        content: &content,
                    },
                    logprobs: None,
                    finish_reason,
                }],
                usage,
                system_fingerprint: None,
            })
        }
        Operation::Completions => {
            let id = format!("cmpl-sim{}", ticket.id);
            let text = answer(completion);
            serde_json::to_vec(&TextCompletion {
                id: &id,
                object: "text_completion",
                created,
                model: &model.name,
                choices: [TextChoice {
                    text: &text,
                    index: 0,
                    logprobs: None,
                    finish_reason: Some(finish_reason),
                }],
                usage,
            })
        }
        Operation::Responses => {
            let id = format!("resp_sim{}", ticket.id);
            let shape = ResponseShape {
                id: &id,
                created,
                model: &model.name,
                max_output_tokens: job.max_tokens,
            };
            let text = answer(completion);
            let usage = ResponsesUsage::new(job.prompt, completion);
            serde_json::to_vec(&shape.object(Some((&text, finish_reason == "length", Some(usage)))))
        }
        Operation::Messages => {
            let id = format!("msg_sim{}", ticket.id);
            let shape = MessageShape {
                id: &id,
                model: &model.name,
                input_tokens: job.prompt,
            };
            let text = answer(completion);
            serde_json::to_vec(&shape.message(&text, completion, finish_reason == "length"))
        }
        Operation::Embeddings => {
            let seeds: Vec<String> = match &job.inputs {
                Some(Input::Text(t)) => vec![t.clone()],
                Some(Input::Texts(ts)) => ts.clone(),
                Some(Input::Tokens(t)) => vec![format!("{t:?}")],
                Some(Input::TokenLists(ls)) => ls.iter().map(|l| format!("{l:?}")).collect(),
                None => Vec::new(),
            };
            let data: Vec<_> = seeds
                .iter()
                .enumerate()
                .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": embedding(s, i, EMBEDDING_DIMS)}))
                .collect();
            serde_json::to_vec(&json!({
                "object": "list", "data": data, "model": model.name,
                "usage": {"prompt_tokens": job.prompt, "total_tokens": job.prompt},
            }))
        }
    };
    json_response(StatusCode::OK, headers, body.unwrap_or_default())
}

fn cell_of(account: &Account, model: &str) -> Result<Arc<Cell>, ApiError> {
    account
        .cells
        .get(model)
        .cloned()
        .ok_or_else(|| ApiError::ModelNotFound(model.to_owned()))
}

fn include_usage(stream: bool, options: Option<StreamOptions>) -> bool {
    stream && options.and_then(|o| o.include_usage).unwrap_or(false)
}

async fn chat(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let prepared = (|| {
        let account = authenticate(&sim, &headers)?;
        let req: ChatRequest = parse(&body)?;
        let cell = cell_of(&account, &req.model)?;
        if req.messages.is_empty() {
            return Err(ApiError::bad_request(
                "[] is too short - 'messages'",
                Some("messages"),
                Some("empty_array"),
            ));
        }
        if let Some(echo) = echoed_bad_request(&sim, &account, &req.model, &last_message_text(&req))
        {
            return Ok(Err(echo));
        }
        let stream = req.stream.unwrap_or(false);
        let job = Job {
            operation: Operation::ChatCompletions,
            prompt: chat_prompt_tokens(&req.messages),
            max_tokens: req.max_completion_tokens.or(req.max_tokens),
            stream,
            include_usage: include_usage(stream, req.stream_options),
            inputs: None,
        };
        Ok(Ok((account, cell, job)))
    })();
    match prepared {
        Ok(Err(echo)) => echo,
        Ok(Ok((account, cell, job))) => generate(sim, account, cell, job).await,
        Err(e) => e.counted(&sim),
    }
}

async fn completions(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let prepared = (|| {
        let account = authenticate(&sim, &headers)?;
        let req: CompletionRequest = parse(&body)?;
        let cell = cell_of(&account, &req.model)?;
        let stream = req.stream.unwrap_or(false);
        let job = Job {
            operation: Operation::Completions,
            prompt: req.prompt.as_ref().map_or(0, Input::tokens),
            max_tokens: req.max_tokens,
            stream,
            include_usage: include_usage(stream, req.stream_options),
            inputs: None,
        };
        Ok::<_, ApiError>((account, cell, job))
    })();
    match prepared {
        Ok((account, cell, job)) => generate(sim, account, cell, job).await,
        Err(e) => e.counted(&sim),
    }
}

async fn embeddings(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let prepared = (|| {
        let account = authenticate(&sim, &headers)?;
        let req: EmbeddingRequest = parse(&body)?;
        let cell = cell_of(&account, &req.model)?;
        if req.input.count() == 0 {
            return Err(ApiError::bad_request(
                "'input' must not be empty.",
                Some("input"),
                None,
            ));
        }
        let job = Job {
            operation: Operation::Embeddings,
            prompt: req.input.tokens(),
            max_tokens: None,
            stream: false,
            include_usage: false,
            inputs: Some(req.input),
        };
        Ok((account, cell, job))
    })();
    match prepared {
        Ok((account, cell, job)) => generate(sim, account, cell, job).await,
        Err(e) => e.counted(&sim),
    }
}

async fn responses(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let prepared = (|| {
        let account = authenticate(&sim, &headers)?;
        let req: ResponsesRequest = parse(&body)?;
        let cell = cell_of(&account, &req.model)?;
        if let Some(i) = req.malformed_item() {
            return Err(ApiError::bad_request(
                format!("Invalid type for 'input[{i}]': expected an object."),
                Some(&format!("input[{i}]")),
                Some("invalid_type"),
            ));
        }
        let stream = req.stream.unwrap_or(false);
        let job = Job {
            operation: Operation::Responses,
            prompt: req.prompt_tokens(),
            max_tokens: req.max_output_tokens,
            stream,
            include_usage: true,
            inputs: None,
        };
        Ok::<_, ApiError>((account, cell, job))
    })();
    match prepared {
        Ok((account, cell, job)) => generate(sim, account, cell, job).await,
        Err(e) => e.counted(&sim),
    }
}

/// Checks what Anthropic checks before anything else: the key and the
/// `anthropic-version` header, then the JSON body.
fn messages_request(
    sim: &Sim,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Arc<Account>, MessagesRequest), ApiError> {
    let account = authenticate(sim, headers)?;
    if headers.get(VERSION_HEADER).is_none() {
        return Err(ApiError::bad_request(
            "anthropic-version: header is required",
            None,
            None,
        ));
    }
    let req: MessagesRequest = parse(body)?;
    if let Some(i) = req.bad_role() {
        return Err(ApiError::bad_request(
            format!("messages.{i}.role: Input should be 'user' or 'assistant'"),
            None,
            None,
        ));
    }
    Ok((account, req))
}

async fn messages(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let prepared = (|| {
        let (account, req) = messages_request(&sim, &headers, &body)?;
        let cell = cell_of(&account, &req.model)?;
        let Some(max_tokens) = req.max_tokens else {
            return Err(ApiError::bad_request(
                "max_tokens: Field required",
                None,
                None,
            ));
        };
        if req.messages.is_empty() {
            return Err(ApiError::bad_request(
                "messages: at least one message is required",
                None,
                None,
            ));
        }
        let job = Job {
            operation: Operation::Messages,
            prompt: req.input_tokens(),
            max_tokens: Some(max_tokens),
            stream: req.stream.unwrap_or(false),
            include_usage: true,
            inputs: None,
        };
        Ok((account, cell, job))
    })();
    match prepared {
        Ok((account, cell, job)) => generate(sim, account, cell, job).await,
        Err(e) => e.counted_anthropic(&sim),
    }
}

/// `POST /v1/messages/count_tokens`: the input tokens, not metered (Anthropic limits
/// it apart, far above what a test sends).
async fn count_tokens(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    match messages_request(&sim, &headers, &body).and_then(|(account, req)| {
        cell_of(&account, &req.model)?;
        Ok(req.input_tokens())
    }) {
        Ok(tokens) => json_response(
            StatusCode::OK,
            HeaderMap::new(),
            serde_json::to_vec(&json!({"input_tokens": tokens})).unwrap_or_default(),
        ),
        Err(e) => e.counted_anthropic(&sim),
    }
}

async fn models(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    if let Err(e) = authenticate(&sim, &headers) {
        return e.counted(&sim);
    }
    let data: Vec<_> = sim
        .models()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "sluice-sim"}))
        .collect();
    let body = serde_json::to_vec(&json!({"object": "list", "data": data})).unwrap_or_default();
    json_response(StatusCode::OK, HeaderMap::new(), body)
}

async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    let body = serde_json::to_vec_pretty(&sim.stats()).unwrap_or_default();
    json_response(StatusCode::OK, HeaderMap::new(), body)
}

async fn reset_stats(State(sim): State<Arc<Sim>>) -> Response {
    sim.reset_stats();
    json_response(
        StatusCode::OK,
        HeaderMap::new(),
        br#"{"reset":"stats"}"#.to_vec(),
    )
}

async fn reset_all(State(sim): State<Arc<Sim>>) -> Response {
    sim.reset_all();
    json_response(
        StatusCode::OK,
        HeaderMap::new(),
        br#"{"reset":"all"}"#.to_vec(),
    )
}

/// `POST /admin/accounts/{account}`: change an account's standing and/or its limits per model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminAccount {
    #[serde(default)]
    state: Option<AccountState>,
    #[serde(default)]
    limits: Option<BTreeMap<String, Vec<RawLimitSpec>>>,
}

/// Admin errors are not counted in `/stats`: they are not provider traffic.
async fn admin_account(
    State(sim): State<Arc<Sim>>,
    Path(account): Path<String>,
    body: Bytes,
) -> Response {
    admin_account_inner(&sim, &account, &body).unwrap_or_else(IntoResponse::into_response)
}

fn admin_account_inner(sim: &Sim, account: &str, body: &[u8]) -> Result<Response, ApiError> {
    let req: AdminAccount = parse(body)?;
    let found = sim.find_account(account).ok_or(ApiError::AccountNotFound)?;
    // Check everything before changing anything.
    let mut changes = Vec::new();
    for (model, specs) in req.limits.unwrap_or_default() {
        if !found.cells.contains_key(&model) {
            return Err(ApiError::bad_request(
                format!("model {model:?} is not served"),
                Some("limits"),
                None,
            ));
        }
        let limits = parse_limits(&specs, &format!("limits.{model}"))
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("limits"), None))?;
        if limits.iter().any(|l| l.amount == 0 || l.window.is_zero()) {
            return Err(ApiError::bad_request(
                "a limit needs an amount >= 1 and a window > 0",
                Some("limits"),
                None,
            ));
        }
        changes.push((model, limits));
    }
    for (model, limits) in changes {
        sim.set_limits(&found, &model, limits)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("limits"), None))?;
    }
    if let Some(state) = req.state {
        found.set_state(state);
    }
    let body = serde_json::to_vec(&json!({"account": found.name, "state": found.state()}))
        .unwrap_or_default();
    Ok(json_response(StatusCode::OK, HeaderMap::new(), body))
}
