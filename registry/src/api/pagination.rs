//! `n`/`last` pagination with a `Link` header, shared by tag lists and the catalog.

use axum::http::HeaderValue;

use super::Req;
use crate::error::{Error, Result};

pub struct Page {
    pub items: Vec<String>,
    /// The `Link` header pointing at the next page, when there is one.
    pub link: Option<HeaderValue>,
}

/// Returns the items after `last` (lexically), at most `n` of them. `items` must be sorted.
pub fn paginate(items: Vec<String>, req: &Req, path: &str) -> Result<Page> {
    let n = req
        .param("n")
        .map(|v| {
            v.parse::<usize>().map_err(|_| Error::BadRequest(format!("n must be a non-negative integer, got {v:?}")))
        })
        .transpose()?;
    let start = match req.param("last") {
        Some(last) => items.partition_point(|item| item.as_str() <= last),
        None => 0,
    };
    let mut items = items;
    let mut rest = items.split_off(start);
    let link = match n {
        Some(n) if rest.len() > n => {
            rest.truncate(n);
            rest.last().map(|last| {
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("n", &n.to_string())
                    .append_pair("last", last)
                    .finish();
                super::header_value(&format!("<{path}?{query}>; rel=\"next\""))
            })
        }
        _ => None,
    };
    Ok(Page { items: rest, link })
}
