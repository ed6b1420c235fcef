-- Tables for examples/postgres/pipeline.toml.
CREATE TABLE IF NOT EXISTS articles (
    id           integer PRIMARY KEY,
    url          text NOT NULL,
    title        text,
    processed_at timestamptz
);

CREATE TABLE IF NOT EXISTS article_copies (
    article_id integer PRIMARY KEY REFERENCES articles (id),
    title      text,
    copied_at  timestamptz NOT NULL DEFAULT now()
);

-- Some rows to work on.
INSERT INTO articles (id, url, title)
SELECT i, 'https://example.org/news/' || i, 'Article ' || i
FROM generate_series(1, 200) AS i
ON CONFLICT (id) DO NOTHING;
