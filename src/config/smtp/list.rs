//! Lists in `[smtp]` (networks, domains, sender patterns): a TOML array, or one comma-separated
//! string, which is how the environment sets them (`GRAPH_RELAY_SMTP__ALLOWED_NETWORKS=a,b`) and
//! which also works for keys under named tables, whose names the loader cannot know in advance.

use std::fmt::{self, Display};
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

pub fn deserialize<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    deserializer.deserialize_any(ListVisitor(PhantomData))
}

pub fn serialize<S, T: Display>(items: &[T], serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
{
    serializer.collect_seq(items.iter().map(ToString::to_string))
}

struct ListVisitor<T>(PhantomData<T>);

fn parse<T, E>(item: &str) -> Result<T, E>
where
    T: FromStr,
    T::Err: Display,
    E: de::Error,
{
    item.trim()
        .parse()
        .map_err(|err| E::custom(format!("{:?}: {err}", item.trim())))
}

impl<'de, T> Visitor<'de> for ListVisitor<T>
where
    T: FromStr,
    T::Err: Display,
{
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list, or a comma-separated string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<T>, E> {
        text.split(',')
            .filter(|item| !item.trim().is_empty())
            .map(parse)
            .collect()
    }

    // The environment source parses "25" as a number.
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Vec<T>, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Vec<T>, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<String>()? {
            items.push(parse(&item)?);
        }
        Ok(items)
    }
}
