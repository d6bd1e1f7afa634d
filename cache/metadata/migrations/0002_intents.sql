-- Work a crash may have cut short: an upload between intend and insert ('put'), or a
-- delete whose blob and variants may remain ('delete'). Recovery reads only this table.
CREATE TABLE intents (
    id text COLLATE "C" PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('put', 'delete')),
    created_ns bigint NOT NULL
);

CREATE INDEX intents_by_age ON intents (created_ns);
