//! Table definitions shared by both backends. Only types the derived `MultiConnection`
//! supports appear here (Text, SmallInt, BigInt, Timestamp): flags are SMALLINT 0/1.

diesel::table! {
    resources (tenant, resource_type, id) {
        tenant -> Text,
        resource_type -> Text,
        id -> Text,
        version_id -> BigInt,
        deleted -> SmallInt,
        last_updated -> Timestamp,
        patient_id -> Nullable<Text>,
        content -> Text,
    }
}

diesel::table! {
    resource_versions (tenant, resource_type, id, version_id) {
        tenant -> Text,
        resource_type -> Text,
        id -> Text,
        version_id -> BigInt,
        deleted -> SmallInt,
        last_updated -> Timestamp,
        content -> Nullable<Text>,
    }
}

diesel::table! {
    search_tokens (tenant, resource_type, param, token, resource_id) {
        tenant -> Text,
        resource_type -> Text,
        resource_id -> Text,
        param -> Text,
        token -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    resources,
    resource_versions,
    search_tokens,
    tenant_keys,
    data_keys,
    ledger_entries,
    ledger_nodes,
    ledger_checkpoints,
    ledger_logs,
    change_log,
    sync_mutations,
    sync_conflicts,
    legal_holds,
    retention_runs,
    retention_destructions
);

diesel::table! {
    tenant_keys (tenant) {
        tenant -> Text,
        kek_version -> BigInt,
        wrapped -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    data_keys (key_id) {
        key_id -> BigInt,
        tenant -> Text,
        owner -> Text,
        wrapped -> Nullable<Text>,
        created_at -> Timestamp,
        destroyed_at -> Nullable<Timestamp>,
        destroyed_reason -> Nullable<Text>,
    }
}

diesel::table! {
    ledger_entries (log, seq) {
        log -> Text,
        seq -> BigInt,
        time -> Text,
        tenant -> Nullable<Text>,
        actor_sub -> Nullable<Text>,
        action -> Text,
        patient -> Nullable<Text>,
        outcome -> Text,
        leaf -> Text,
        leaf_hash -> Text,
    }
}

diesel::table! {
    ledger_nodes (log, level, idx) {
        log -> Text,
        level -> BigInt,
        idx -> BigInt,
        hash -> Text,
    }
}

diesel::table! {
    ledger_checkpoints (log, size) {
        log -> Text,
        size -> BigInt,
        root_hash -> Text,
        timestamp -> Text,
        note -> Text,
    }
}

diesel::table! {
    ledger_logs (log) {
        log -> Text,
        created_at -> Text,
    }
}

diesel::table! {
    change_log (tenant, cursor) {
        cursor -> BigInt,
        tenant -> Text,
        resource_type -> Text,
        resource_id -> Text,
        version_id -> BigInt,
        op -> Text,
        patient_id -> Nullable<Text>,
        committed_at -> Text,
    }
}

diesel::table! {
    sync_mutations (tenant, mutation_id) {
        tenant -> Text,
        mutation_id -> Text,
        principal -> Text,
        result -> Text,
        created_at -> Text,
        resource_type -> Nullable<Text>,
        resource_id -> Nullable<Text>,
    }
}

diesel::table! {
    sync_conflicts (id) {
        id -> Text,
        tenant -> Text,
        resource_type -> Text,
        resource_id -> Text,
        patient_id -> Nullable<Text>,
        mutation_id -> Text,
        base_version -> Nullable<BigInt>,
        server_version -> BigInt,
        strategy -> Text,
        status -> Text,
        detail -> Text,
        created_by -> Text,
        created_at -> Text,
        resolved_by -> Nullable<Text>,
        resolved_at -> Nullable<Text>,
        resolved_version -> Nullable<BigInt>,
    }
}

diesel::table! {
    legal_holds (id) {
        id -> Text,
        tenant -> Text,
        patient_id -> Text,
        reason -> Text,
        created_by -> Text,
        created_at -> Text,
        released_by -> Nullable<Text>,
        released_at -> Nullable<Text>,
    }
}

diesel::table! {
    retention_runs (id) {
        id -> Text,
        trigger_kind -> Text,
        evaluated_at -> Text,
        started_at -> Text,
        finished_at -> Nullable<Text>,
        purged -> BigInt,
    }
}

diesel::table! {
    retention_destructions (tenant, patient_id) {
        tenant -> Text,
        patient_id -> Text,
        run_id -> Text,
        rule -> Text,
        category -> Text,
        resources -> Text,
        care_team -> Text,
        destroyed_at -> Text,
    }
}
