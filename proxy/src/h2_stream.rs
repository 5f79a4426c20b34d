//! One HTTP/2 request (a stream of a TLS connection with ALPN `h2`, docs/tls.md),
//! framed by Pingora's HTTP/2 server and carried by the gateway's own code the way an
//! HTTP/1 request is ([`crate::exchange`]): the request made an HTTP/1.1 head
//! (`:authority` as `Host`, RFC 9113 8.3.1; `cookie` fields joined, RFC 9113 8.2.3),
//! **decided** once ([`Gateway::authenticate`]), a refusal **answered** with the same
//! [`Answer`] as on HTTP/1 (its head and body as an HTTP/2 response), anything else
//! **forwarded** by the same step ([`crate::forward`], [`crate::h2_client`]) on a
//! connection of the same pool ([`crate::pool`]). Each request is counted and logged
//! once (`exchange::finish`).
//!
//! WebSockets are not carried over HTTP/2: Pingora's HTTP/2 server does not offer
//! RFC 8441's extended CONNECT, so browsers open an HTTP/1.1 connection for them (the
//! tunnel, [`crate::tunnel`]); a plain `CONNECT` is answered `405`.

use http::{HeaderValue, Method, header};
use pingora::http::RequestHeader;
use pingora::protocols::http::v2::server::HttpSession;

use crate::decision::{Answer, Decision, Outcome};
use crate::exchange::{Ctx, finish};
use crate::forward::forward;
use crate::framing::{Framing, map_framing};
use crate::gateway::Gateway;
use crate::h2_client::H2Client;
use crate::pool::Pool;
use crate::socketio::{self, REFUSED_POST_BYTES};

/// Carries one HTTP/2 request, from its head (read by Pingora's HTTP/2 server) to the
/// end of its answer.
pub async fn serve(gw: &Gateway, pool: &Pool, session: HttpSession) {
    let _in_flight = gw.enter();
    let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
    let mut down = H2Client { session, peer };
    // The head leaves the session (a request without fields takes its place, nothing
    // allocated): the decision rewrites it while the session answers.
    let blank = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut req = std::mem::replace(down.session.req_header_mut(), blank);
    as_http1(&mut req);
    let framing = body_framing(&req, down.session.is_body_empty());
    let mut ctx = Ctx {
        outcome: Outcome::Undecided,
        status: 0,
        upstream_failed: false,
        keep_alive: true,
        http10: false,
    };
    let decision = if req.method == Method::CONNECT {
        // As Pingora's HTTP proxy answered it: nothing here tunnels a CONNECT.
        let message = "CONNECT is not served";
        let answer = Answer::json(405, "method_not_allowed", message, Outcome::BadRequest);
        Ok(Decision::Answer(answer))
    } else {
        gw.authenticate(&mut req, peer.map(|a| a.ip()))
    };
    match decision {
        Ok(Decision::Answer(answer)) => answer_stream(gw, &mut down, &req, answer, &mut ctx).await,
        Ok(Decision::Forward(f)) => {
            // A public request's connection is kept by its client alone (crate::pool):
            // on HTTP/2, by this stream, so it is not used again.
            let mut kept = pool.for_client();
            forward(gw, &mut kept, &mut down, &mut req, framing, f, &mut ctx).await;
        }
        Err(e) => {
            tracing::error!("deciding a request failed: {e}");
            let answer = Answer::json(500, "internal_error", "internal error", Outcome::Undecided);
            answer_stream(gw, &mut down, &req, answer, &mut ctx).await;
        }
    }
    finish(gw, peer, &req, &ctx);
}

/// The request as an HTTP/1.1 head for the decision and the upstream: `Host` is
/// `:authority` (RFC 9113 8.3.1: an intermediary making an HTTP/1.1 request of an
/// HTTP/2 one uses it), and the `cookie` fields HTTP/2 may split are joined into one
/// (RFC 9113 8.2.3), as an HTTP/1.1 server and the token lookup expect. The target is
/// written in origin form ([`RequestHeader::raw_path`]).
fn as_http1(req: &mut RequestHeader) {
    let host = req
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        let _ = req.insert_header(header::HOST, host);
    }
    let mut cookies = req.headers.get_all(header::COOKIE).iter();
    if let (Some(first), Some(_)) = (cookies.next(), cookies.next()) {
        let mut joined = first.as_bytes().to_vec();
        for more in req.headers.get_all(header::COOKIE).iter().skip(1) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(more.as_bytes());
        }
        if let Ok(joined) = HeaderValue::from_bytes(&joined) {
            let _ = req.insert_header(header::COOKIE, joined);
        }
    }
}

/// How the body is written upstream: by its `Content-Length`, none when the stream
/// ended with its head, else as chunks (HTTP/2 frames it, HTTP/1.1 needs a framing).
fn body_framing(req: &RequestHeader, ended: bool) -> Framing {
    match map_framing(&req.headers) {
        Ok(Framing::Length(n)) => Framing::Length(n),
        _ if ended => Framing::None,
        _ => Framing::Chunked,
    }
}

/// Answers from the gateway (the upstream never sees the request): with
/// `reject_with = "socketio"`, a refused Engine.IO request gets socket.io's answer,
/// reading a `POST`'s body, as on HTTP/1 ([`socketio::polling_answer`]).
pub(crate) async fn answer_stream(
    gw: &Gateway,
    down: &mut H2Client,
    req: &RequestHeader,
    mut answer: Answer,
    ctx: &mut Ctx,
) {
    ctx.outcome = answer.outcome;
    if let Some((kind, err)) = answer.socketio.take() {
        let session = &mut down.session;
        let post_body = move || async move { read_body(session, REFUSED_POST_BYTES).await };
        let (polling, _) = socketio::polling_answer(gw.refusals(), &err, kind, post_body).await;
        answer = polling;
    }
    ctx.status = answer.status;
    write_answer(gw, &mut down.session, req, &answer).await;
}

/// Writes an answer of the gateway's as an HTTP/2 response: [`Answer::head`] and its
/// body. A client that left is not an error.
pub(crate) async fn write_answer(
    gw: &Gateway,
    session: &mut HttpSession,
    req: &RequestHeader,
    answer: &Answer,
) {
    let origin = req.headers.get(header::ORIGIN);
    let head = match answer.head(origin, &gw.settings().auth.cors_origins) {
        Ok(head) => head,
        Err(e) => {
            tracing::error!("an answer's head could not be built: {e}");
            return;
        }
    };
    let empty = answer.body.is_empty();
    if session.write_response_header(Box::new(head), empty).is_ok() && !empty {
        let _ = session.write_body(answer.body.clone(), true).await;
    }
}

/// A request body of at most `limit` bytes; `None` when it is longer or the client
/// reset the stream.
async fn read_body(session: &mut HttpSession, limit: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(data) = session.read_body_bytes().await.ok()? {
        if body.len() + data.len() > limit {
            return None;
        }
        body.extend_from_slice(&data);
    }
    Some(body)
}
