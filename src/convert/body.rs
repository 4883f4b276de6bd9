//! Body selection for [`super::convert`]: the HTML part if there is a real one, else the text
//! part, else an empty text body.

use mail_parser::{Message as MimeMessage, MessagePartId, PartType};

use crate::graph::model::{BodyType, ItemBody};

/// The chosen body and the MIME part it came from, so that part is not also sent as an
/// attachment.
pub(super) struct Body {
    pub item: ItemBody,
    pub part_id: Option<MessagePartId>,
}

pub(super) fn select(message: &MimeMessage<'_>) -> Body {
    // Look at the part types rather than calling body_html(0): mail-parser lists a text-only
    // message's text part as its HTML body too, and body_html would wrap it in generated HTML.
    let html = first_part(&message.html_body, message).and_then(|(id, body)| match body {
        PartType::Html(html) => Some((id, BodyType::Html, html)),
        _ => None,
    });
    let text = || {
        first_part(&message.text_body, message).and_then(|(id, body)| match body {
            PartType::Text(text) => Some((id, BodyType::Text, text)),
            _ => None,
        })
    };
    match html.or_else(text) {
        Some((id, content_type, content)) => Body {
            item: ItemBody {
                content_type,
                content: content.to_string(),
            },
            part_id: Some(id),
        },
        None => Body {
            item: ItemBody {
                content_type: BodyType::Text,
                content: String::new(),
            },
            part_id: None,
        },
    }
}

/// The first part listed in `ids` (mail-parser's html_body or text_body) and its body.
fn first_part<'m>(
    ids: &[MessagePartId],
    message: &'m MimeMessage<'_>,
) -> Option<(MessagePartId, &'m PartType<'m>)> {
    let id = *ids.first()?;
    Some((id, &message.part(id)?.body))
}
