-- The digest fixture's database: the articles the job reads and the digests it writes.
-- Run once, by the pipeline, when the database file does not exist yet. To start over, delete
-- the .db file and the pipeline's state folder (see README.md).

-- One row per page to digest. The job takes the rows whose `processed_at`, `failed_at` and
-- `skipped_at` are all NULL, in `id` order; it sets `processed_at` when it has written the row's
-- digest, and `failed_at` or `skipped_at` (with `error`) when it gave up on the row, so that a
-- row it cannot digest is not taken again and again.
CREATE TABLE articles (
  id INTEGER PRIMARY KEY,
  url TEXT NOT NULL,         -- relative to examples/digest/pages/ (e.g. 'city-council-approves-budget.html'); the pipeline resolves it to a file:// URL
  source TEXT NOT NULL,      -- the publication
  added_at TEXT NOT NULL,    -- ISO 8601
  processed_at TEXT,         -- NULL until the job has digested it
  failed_at TEXT,            -- set when it failed at some stage (`error` says why)
  skipped_at TEXT,           -- set when a stage skipped it (`error` says why)
  error TEXT
);

-- One row per digested article, written by the job's last stage (an upsert on `article_id`, so
-- a page digested again replaces its row). `title` to `site_name` are what the extract stage
-- found on the page, NULL where the page does not say; `text_chars` is the length of the
-- article text given to the model.
CREATE TABLE digests (
  article_id INTEGER PRIMARY KEY REFERENCES articles(id),
  title TEXT, author TEXT, published TEXT, language TEXT, site_name TEXT,
  text_chars INTEGER NOT NULL,
  facts TEXT NOT NULL,       -- JSON: {"facts": [...], "summary": "..."}
  digested_at TEXT NOT NULL
);

-- The 30 pages in pages/, in the order they were found: 9 publications, 27 pages in English,
-- one each in German, French and Spanish.
INSERT INTO articles (id, url, source, added_at) VALUES
  (1, 'ridgeback-50k-race-report.html', 'Kestrel Trail Notes', '2026-09-15T21:22:00Z'),
  (2, 'heat-pump-subsidy-oversubscribed.html', 'The Harbour Times', '2026-09-24T09:04:00Z'),
  (3, 'water-treatment-plant-upgrade.html', 'Northgate Courier', '2026-09-30T16:23:00Z'),
  (4, 'cider-festival-record-crowd.html', 'Fenwick Valley Gazette', '2026-10-02T10:24:00Z'),
  (5, 'fell-relay-results.html', 'Kestrel Trail Notes', '2026-10-05T20:46:00Z'),
  (6, 'ferry-ridership-record.html', 'The Harbour Times', '2026-10-08T08:59:00Z'),
  (7, 'review-lumen-aurora-7-e-reader.html', 'The Lantern', '2026-10-09T09:45:00Z'),
  (8, 'university-wins-tidal-energy-grant.html', 'Northgate Courier', '2026-10-14T12:50:00Z'),
  (9, 'school-roof-repairs-approved.html', 'Fenwick Valley Gazette', '2026-10-16T10:31:00Z'),
  (10, 'sourdough-rye-loaf.html', 'Saltmarsh Kitchen', '2026-10-20T08:16:00Z'),
  (11, 'hospital-waiting-list-falls.html', 'Northgate Courier', '2026-10-22T18:29:00Z'),
  (12, 'marche-couvert-renovation.html', 'Le Courrier des Collines', '2026-10-27T19:15:00Z'),
  (13, 'review-tidewater-pulse-3-earbuds.html', 'The Lantern', '2026-10-28T10:04:00Z'),
  (14, 'tarrow-bridge-reopens.html', 'Fenwick Valley Gazette', '2026-10-30T11:37:00Z'),
  (15, 'quayside-by-election-result.html', 'The Harbour Times', '2026-10-31T03:44:00Z'),
  (16, 'harbour-dredging-contract.html', 'The Harbour Times', '2026-11-03T14:15:00Z'),
  (17, 'farmers-market-moves-to-market-hall.html', 'Fenwick Valley Gazette', '2026-11-05T11:25:00Z'),
  (18, 'bus-fares-frozen-2027.html', 'Northgate Courier', '2026-11-06T11:47:00Z'),
  (19, 'winter-training-block.html', 'Kestrel Trail Notes', '2026-11-08T21:22:00Z'),
  (20, 'smoked-mackerel-chowder.html', 'Saltmarsh Kitchen', '2026-11-10T09:51:00Z'),
  (21, 'biscuit-factory-closure.html', 'Northgate Courier', '2026-11-12T16:11:00Z'),
  (22, 'brindle-haul-cargo-bike-long-term-test.html', 'The Lantern', '2026-11-13T10:16:00Z'),
  (23, 'stadtwerke-senken-strompreis.html', 'Rheinufer Rundschau', '2026-11-18T18:01:00Z'),
  (24, 'village-shop-community-buyout.html', 'Fenwick Valley Gazette', '2026-11-19T11:38:00Z'),
  (25, 'city-council-approves-budget.html', 'The Harbour Times', '2026-11-20T00:11:00Z'),
  (26, 'airport-passenger-numbers.html', 'Northgate Courier', '2026-11-20T12:10:00Z'),
  (27, 'home-battery-buyers-guide.html', 'The Lantern', '2026-11-24T11:10:00Z'),
  (28, 'puerto-pesquero-capturas.html', 'El Faro del Sur', '2026-11-25T14:43:00Z'),
  (29, 'rhubarb-almond-cake.html', 'Saltmarsh Kitchen', '2026-11-26T08:23:00Z'),
  (30, 'tram-line-extension-consultation.html', 'The Harbour Times', '2026-11-27T10:34:00Z');
