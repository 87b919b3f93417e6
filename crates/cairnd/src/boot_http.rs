//! Network boot over HTTP (issue 13, `docs/boot.md`): the iPXE script
//! that boots the asking host's build, `/boot.ipxe?uuid=${uuid}&mac=${net0/mac}`
//! (iPXE's own variables), and the image root's files under `/images/`,
//! with single byte ranges (RFC 9110 14), so iPXE and HTTP-booting
//! firmware fetch large images faster than TFTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_boot::images::{Denied, ImageRoot};
use cairn_core::pxe;
use cairn_fleet::Model;
use cairn_fleet::fleet::Identity;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{info, warn};

/// What the boot routes serve from.
pub struct BootHttp {
    pub model: Arc<Model>,
    pub root: ImageRoot,
    /// The DNS domain hosts find the directory in (`${domain}`).
    pub domain: String,
    /// Whether a host nothing knows gets a menu of the builds.
    pub menu: bool,
}

/// Bytes read from a boot file at a time (a read is a trip to tokio's
/// blocking threads: 4 KiB, the default, made a 50 MiB image 12,800 of
/// them).
const READ_CHUNK: usize = 256 * 1024;

/// The routes: `/boot.ipxe` and `/images/{*path}`.
pub fn routes(boot: Arc<BootHttp>) -> Router {
    Router::new()
        .route("/boot.ipxe", get(script))
        .route("/images/{*path}", get(file))
        .with_state(boot)
}

/// The identity a request gives: absent (a bare `/boot.ipxe`), or the
/// values iPXE filled in (possibly empty, when it knows none).
#[derive(serde::Deserialize)]
struct Who {
    uuid: Option<String>,
    mac: Option<String>,
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn script(
    State(b): State<Arc<BootHttp>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(who): Query<Who>,
) -> Response {
    if who.uuid.is_none() && who.mac.is_none() {
        // A bare `/boot.ipxe` (a DHCP boot file that names no host): ask
        // again with the identity iPXE knows.
        let body = format!(
            "#!ipxe\nchain http://{}/boot.ipxe?uuid=${{uuid}}&mac=${{net0/mac}}\n",
            host_of(&headers)
        );
        return text(StatusCode::OK, body);
    }
    let uuid = who.uuid.unwrap_or_default();
    let mac = who.mac.unwrap_or_default();
    // An identity asked for but empty gets an answer, never the chain
    // again (which would loop).
    let id = Identity::from_pb(&cairn_boot::pb::Identity {
        uuid,
        macs: (!mac.is_empty()).then_some(mac).into_iter().collect(),
        ..Default::default()
    });
    let id = match id {
        Ok(id) => id,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // The UUID as iPXE reads it from SMBIOS may be byte-swapped against
    // the one stored: both are tried, as over TFTP.
    let mut ids = vec![id.clone()];
    if let Some(u) = id
        .uuid
        .as_deref()
        .and_then(|u| uuid::Uuid::parse_str(u).ok())
    {
        for other in pxe::Name::Uuid(u).uuid_candidates().into_iter().skip(1) {
            let mut swapped = id.clone();
            swapped.uuid = Some(other.hyphenated().to_string());
            ids.push(swapped);
        }
    }
    let base = format!("http://{}/images", host_of(&headers));
    for id in ids {
        let answer = match b.model.boot_answer(id, Some(client.ip())).await {
            Ok(a) => a,
            // Hosts sharing its identity, or a conflict in its entry's
            // tree: it is not unknown, so neither the menu nor a rule's
            // build, but why, until an administrator resolves it.
            Err(e) if e.refuses_known_host() => {
                warn!(client = %client, cause = %e, "iPXE script refused");
                return text(StatusCode::CONFLICT, format!("{e}\n"));
            }
            Err(_) => continue,
        };
        let resp = &answer.resp;
        let Some(image) = cairn_boot::render::image_of(resp) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("{}: boot.image names no image entry\n", resp.host_dn),
            );
        };
        let vars = cairn_boot::render::vars_of(resp, &b.domain, client.ip(), server_of(&headers));
        let body = pxe::ipxe_script(&image, &vars, &base);
        match &answer.rule {
            Some(rule) => {
                info!(client = %client, host = %resp.host_dn, build = %image.name, rule = %rule, "iPXE script rendered for an unknown host as a deploy rule places it")
            }
            None => {
                info!(client = %client, host = %resp.host_dn, build = %image.name, "iPXE script rendered")
            }
        }
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response();
    }
    if b.menu {
        let menu = cairn_boot::render::menu(&b.model, &b.domain, client.ip(), server_of(&headers));
        match menu.await {
            Ok((images, vars)) => {
                info!(client = %client, "iPXE boot menu for an unknown host");
                return text(StatusCode::OK, pxe::ipxe_menu(&images, &vars, &base));
            }
            Err(e) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the image library: {e}\n"),
                );
            }
        }
    }
    text(
        StatusCode::NOT_FOUND,
        "no host has this identity and no deploy rule matched it\n".into(),
    )
}

/// The `Host` the client asked, when it is a plain host[:port]: the
/// address the boot files are then fetched from.
fn host_of(headers: &HeaderMap) -> &str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("127.0.0.1")
}

/// The host part of [`host_of`] (`${server}`): the node's address as the
/// client reached it, an IPv6 address in brackets (so `${server}:53` is
/// an address and port).
fn server_of(headers: &HeaderMap) -> &str {
    host_part(host_of(headers))
}

/// `host` of `host[:port]`, `[v6]` of `[v6]:port` or `[v6]`.
fn host_part(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    match h.split_once(':') {
        Some((host, _)) if h.matches(':').count() == 1 => host,
        _ => h,
    }
}

/// One byte range of a file of `len` bytes, from a `Range` header: None
/// for the whole file, an error for a range that cannot be served.
fn range(value: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = value else {
        return Ok(None);
    };
    let spec = v.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        // Several ranges: the whole file (RFC 9110 allows ignoring Range).
        return Ok(None);
    }
    let (a, z) = spec.split_once('-').ok_or(())?;
    let (a, z) = (a.trim(), z.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = z.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if z.is_empty() {
            len.checked_sub(1).ok_or(())?
        } else {
            z.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
        };
        (start, end)
    };
    if start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn file(
    State(b): State<Arc<BootHttp>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let root = b.root.clone();
    let name = path.clone();
    let opened = tokio::task::spawn_blocking(move || root.open_file(&path)).await;
    let (f, len) = match opened {
        Ok(Ok(found)) => found,
        Ok(Err(Denied::Missing)) => return text(StatusCode::NOT_FOUND, "no such file\n".into()),
        Ok(Err(e @ (Denied::Corrupt | Denied::Unverified))) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
        }
        Ok(Err(e)) => return text(StatusCode::FORBIDDEN, format!("{e}\n")),
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read\n".into()),
    };
    let mut f = tokio::fs::File::from_std(f);
    let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    info!(client = %client, file = %name.escape_debug(), range = asked.unwrap_or("all"), "HTTP boot file");
    match range(asked, len) {
        Err(()) => Response::builder()
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{len}"))
            .body(Body::empty())
            .unwrap_or_default(),
        Ok(None) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, len)
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from_stream(
                tokio_util::io::ReaderStream::with_capacity(f, READ_CHUNK),
            ))
            .unwrap_or_default(),
        Ok(Some((start, end))) => {
            if f.seek(std::io::SeekFrom::Start(start)).await.is_err() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read\n".into());
            }
            let n = end - start + 1;
            Response::builder()
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_LENGTH, n)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                .header(header::ACCEPT_RANGES, "bytes")
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::from_stream(
                    tokio_util::io::ReaderStream::with_capacity(f.take(n), READ_CHUNK),
                ))
                .unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::range;

    #[test]
    fn the_server_is_the_host_the_client_asked() {
        use super::host_part;
        assert_eq!(host_part("10.77.1.21:8080"), "10.77.1.21");
        assert_eq!(host_part("cairn"), "cairn");
        assert_eq!(host_part("[fd00::1]:8080"), "[fd00::1]");
        assert_eq!(host_part("[fd00::1]"), "[fd00::1]");
    }

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        assert_eq!(range(None, 100), Ok(None));
        assert_eq!(range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(range(Some("bytes=95-200"), 100), Ok(Some((95, 99))));
        assert_eq!(range(Some("bytes=-200"), 100), Ok(Some((0, 99))));
        assert_eq!(range(Some("bytes=0-1,5-6"), 100), Ok(None));
        for bad in [
            "bytes=100-",
            "bytes=10-5",
            "bytes=-0",
            "items=0-1",
            "bytes=a-b",
            "bytes=5",
        ] {
            assert_eq!(range(Some(bad), 100), Err(()), "{bad}");
        }
        assert_eq!(range(Some("bytes=0-"), 0), Err(()));
    }
}
