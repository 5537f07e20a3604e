//! Conversions between protobuf well-known types and std types, rejecting what does not fit.

use std::time::{Duration, SystemTime};

use crate::error::AdminError;

pub(crate) fn to_proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: duration.subsec_nanos() as i32,
    }
}

pub(crate) fn from_proto_duration(
    field: &str,
    duration: &prost_types::Duration,
) -> Result<Duration, AdminError> {
    if duration.seconds < 0 || duration.nanos < 0 {
        return Err(AdminError::invalid(field, "must not be negative"));
    }
    if duration.nanos >= 1_000_000_000 {
        return Err(AdminError::invalid(field, "nanos must be below 1e9"));
    }
    Ok(Duration::new(
        duration.seconds as u64,
        duration.nanos as u32,
    ))
}

pub(crate) fn to_timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_negatives_are_refused() {
        let duration = Duration::from_millis(1500);
        assert_eq!(
            from_proto_duration("d", &to_proto_duration(duration)).unwrap(),
            duration
        );
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        let error = from_proto_duration("settings.keepalive_timeout", &negative).unwrap_err();
        assert_eq!(
            error.to_string(),
            "settings.keepalive_timeout: must not be negative"
        );
    }
}
