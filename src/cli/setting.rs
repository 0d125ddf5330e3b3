//! Values in settings files, parsed as the flags they stand for parse
//! them: the same types and the same errors whichever way a value is given.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::protocol::id;

/// Visitor methods that take a number or boolean as the string it is
/// written as, as it would be on the command line.
macro_rules! numbers_as_written {
    () => {
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            self.visit_str(&v.to_string())
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            self.visit_str(&v.to_string())
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            self.visit_str(&v.to_string())
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            self.visit_str(&v.to_string())
        }
    };
}

/// A value parsed as its flag parses it: a string, or a number or boolean
/// taken as written.
struct Scalar<T>(T);

impl<'de, T> Deserialize<'de> for Scalar<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(PhantomData))
    }
}

struct ScalarVisitor<T>(PhantomData<T>);

impl<T> ScalarVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn parse<E: de::Error>(v: &str) -> Result<T, E> {
        v.parse()
            .map_err(|err| E::custom(format!("invalid value {v:?}: {err}")))
    }
}

impl<T> Visitor<'_> for ScalarVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = Scalar<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Self::parse(v).map(Scalar)
    }

    numbers_as_written!();
}

/// One value, or a list of them: a repeatable flag.
struct Scalars<T>(Vec<T>);

impl<'de, T> Deserialize<'de> for Scalars<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Many<T>(PhantomData<T>);
        impl<'de, T> Visitor<'de> for Many<T>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            type Value = Scalars<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number or a list of them")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut all = Vec::new();
                while let Some(Scalar(v)) = seq.next_element()? {
                    all.push(v);
                }
                Ok(Scalars(all))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ScalarVisitor::parse(v).map(|v| Scalars(vec![v]))
            }

            numbers_as_written!();
        }
        d.deserialize_any(Many(PhantomData))
    }
}

/// A key id, as a table key.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Kid(String);

impl<'de> Deserialize<'de> for Kid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kid = String::deserialize(d)?;
        match id::kid(&kid) {
            Ok(_) => Ok(Kid(kid)),
            Err(err) => Err(de::Error::custom(format!("{kid:?} is {err}"))),
        }
    }
}

/// A value as its flag takes it; for `deserialize_with`.
pub(super) fn scalar<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    Scalar::deserialize(d).map(|Scalar(v)| Some(v))
}

/// One value or a list, as a repeatable flag takes them; for
/// `deserialize_with`.
pub(super) fn scalars<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    Scalars::deserialize(d).map(|Scalars(v)| Some(v))
}

/// A `[token_keys]` or `[token_secrets]` table: `KID = PATH` lines.
pub(super) fn kid_paths<'de, D>(d: D) -> Result<Option<Vec<(String, PathBuf)>>, D::Error>
where
    D: Deserializer<'de>,
{
    let table = BTreeMap::<Kid, Scalar<KeyPath>>::deserialize(d)?;
    let pairs = table
        .into_iter()
        .map(|(Kid(kid), Scalar(KeyPath(path)))| (kid, path));
    Ok(Some(pairs.collect()))
}

/// The file of a key id, which cannot be empty (as after `--token-key KID=`).
struct KeyPath(PathBuf);

impl FromStr for KeyPath {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("a key id needs a path"),
            path => Ok(KeyPath(PathBuf::from(path))),
        }
    }
}
