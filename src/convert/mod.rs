//! Conversion of a raw MIME message and its envelope into a Graph sendMail request.
