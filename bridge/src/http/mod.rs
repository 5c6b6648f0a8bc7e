//! HTTP mechanics every area shares: errors on the wire, extractors, the body limit, pages and
//! token responses, client authentication, TLS and the server. Nothing here knows a route.

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod page;
pub(crate) mod reply;
pub(crate) mod server;
pub(crate) mod tls;
