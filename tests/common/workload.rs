//! The randomised POS workload the integration tests drive: sales with hostile JSON, items,
//! voids, returns that rewrite totals, late offline sales, moves between stores, deletes,
//! stock work, and rollbacks, from concurrent sessions.

use super::{connect, differences_under, Rng, STORES};
use postgres::Client;
use std::sync::{Arc, Mutex};
use std::thread;

pub const METHODS: [&str; 8] = ["CASH_BS", "CASH_USD", "PAGO_MOVIL", "TRANSFER", "OTHER", "SPLIT", "FIAO", ""];

/// Sale ids any session may pick to void, return, move or delete.
pub type SharedIds = Arc<Mutex<Vec<String>>>;

pub fn money(rng: &mut Rng, max_cents: u64) -> String {
    let cents = 1 + rng.below(max_cents);
    format!("{}.{:02}", cents / 100, cents % 100)
}

pub fn totals(rng: &mut Rng) -> String {
    if rng.chance(4) {
        // What a buggy register may send.
        return rng
            .pick(&[
                r#"{}"#,
                r#"{"total_bs": "abc", "total_usd": null}"#,
                r#"{"subtotal_bs": "12.50", "total_bs": " 12.50 ", "total_usd": "0.34"}"#,
                r#"{"total_bs": {"v": 1}, "total_usd": [1]}"#,
                r#"{"total_bs": "NaN", "total_usd": "Infinity"}"#,
                r#""not an object""#,
                r#"{"total_bs": 1e300, "total_usd": 2e-300}"#,
            ])
            .to_string();
    }
    let subtotal = money(rng, 50_000);
    let discount = if rng.chance(20) { money(rng, 500) } else { "0".into() };
    format!(
        r#"{{"subtotal_bs": {subtotal}, "subtotal_usd": {s_usd}, "discount_bs": {discount}, "discount_usd": 0,
             "total_bs": {total}, "total_usd": {t_usd}}}"#,
        s_usd = format!("{:.2}", subtotal.parse::<f64>().unwrap() / 36.5),
        total = format!("{:.2}", subtotal.parse::<f64>().unwrap() - discount.parse::<f64>().unwrap()),
        t_usd = format!("{:.2}", (subtotal.parse::<f64>().unwrap() - discount.parse::<f64>().unwrap()) / 36.5),
    )
}

pub fn payment(rng: &mut Rng) -> String {
    match *rng.pick(&METHODS) {
        "SPLIT" => r#"{"method": "SPLIT", "split_payments": [{"method": "CASH_USD", "amount_usd": 5, "amount_bs": 182.5},
                       {"method": "PAGO_MOVIL", "amount_usd": 2, "amount_bs": 73}]}"#
            .into(),
        "" if rng.chance(50) => r#"{"note": "no method"}"#.into(),
        method => format!(r#"{{"method": "{method}"}}"#),
    }
}

pub fn customer(rng: &mut Rng, store_index: usize) -> String {
    if rng.chance(40) {
        "NULL".into()
    } else {
        format!("'{}{:012}'::uuid", super::customer_prefix(store_index), 1 + rng.below(10))
    }
}

/// One sale row as SQL values; sometimes an offline register's sale from weeks ago.
pub fn sale_values(rng: &mut Rng) -> String {
    let store_index = rng.below(3) as usize;
    let minutes_ago = if rng.chance(15) { rng.below(60 * 24 * 60) } else { rng.below(60 * 36) };
    format!(
        "(gen_random_uuid(), '{}', now() - interval '{minutes_ago} minutes', 36.5, 'BS', $t${}$t$, $p${}$p$, {})",
        STORES[store_index].0,
        totals(rng),
        payment(rng),
        customer(rng, store_index)
    )
}

pub fn insert_sales(db: &mut postgres::Transaction, rng: &mut Rng, n: usize) -> Vec<String> {
    let values: Vec<String> = (0..n).map(|_| sale_values(rng)).collect();
    let ids: Vec<String> = db
        .query(
            &format!(
                "INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment, customer_id)
                 VALUES {} RETURNING id::text",
                values.join(", ")
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    if rng.chance(30) {
        db.execute(
            "INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
             SELECT gen_random_uuid(), s.id, p.id, 1 + (random() * 3)::int, p.price_bs, p.price_usd
             FROM sales s JOIN LATERAL (SELECT * FROM products WHERE store_id = s.store_id LIMIT 1) p ON true
             WHERE s.id = ANY($1::text[]::uuid[])",
            &[&ids],
        )
        .unwrap();
    }
    if rng.chance(20) {
        // Sold on credit: a debt for each sale with a customer (mv_customer_metrics), some
        // already partly or fully paid.
        let status = *rng.pick(&["open", "open", "partial", "paid"]);
        db.execute(
            "INSERT INTO debts (id, store_id, sale_id, customer_id, created_at, amount_bs, amount_usd, status)
             SELECT gen_random_uuid(), s.store_id, s.id, s.customer_id, s.sold_at, 12.5, 0.34, $2
             FROM sales s WHERE s.id = ANY($1::text[]::uuid[]) AND s.customer_id IS NOT NULL",
            &[&ids, &status],
        )
        .unwrap();
    }
    ids
}

/// Changes one existing sale (never more than one per transaction, so the workload itself
/// cannot deadlock on source rows: any deadlock would be the extension's).
pub fn change_one_sale(db: &mut postgres::Transaction, rng: &mut Rng, id: &str) -> Result<(), postgres::Error> {
    let other_store = STORES[rng.below(3) as usize].0;
    // The sale is locked first, as the POS does before changing a sale, so that a concurrent
    // delete cannot break the foreign key of a return or an item added to it.
    db.execute("SELECT 1 FROM sales WHERE id = $1::text::uuid FOR UPDATE", &[&id])?;
    let sql = match rng.below(12) {
        9 => "UPDATE sale_items SET qty = qty + 1, discount_bs = 0.5
              WHERE id = (SELECT id FROM sale_items WHERE sale_id = $1::text::uuid ORDER BY id LIMIT 1)"
            .to_string(),
        10 => "DELETE FROM sale_items
               WHERE id = (SELECT id FROM sale_items WHERE sale_id = $1::text::uuid ORDER BY id DESC LIMIT 1)"
            .to_string(),
        11 => "INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
               SELECT gen_random_uuid(), s.id, p.id, 2.5, p.price_bs, p.price_usd
               FROM sales s JOIN LATERAL (SELECT * FROM products WHERE store_id = s.store_id ORDER BY random() LIMIT 1) p ON true
               WHERE s.id = $1::text::uuid"
            .to_string(),
        0 | 1 => "UPDATE sales SET voided_at = now(), void_reason = 'test' WHERE id = $1::text::uuid".to_string(),
        2 => "UPDATE sales SET voided_at = NULL WHERE id = $1::text::uuid".to_string(),
        3 | 4 => {
            // A return: LA-CAJA records it and rewrites the sale's totals in place.
            db.execute(
                "WITH r AS (INSERT INTO sale_returns (id, store_id, sale_id, total_bs, total_usd)
                            SELECT gen_random_uuid(), store_id, id, 1, 0.03 FROM sales WHERE id = $1::text::uuid
                            RETURNING id, sale_id)
                 INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
                 SELECT gen_random_uuid(), r.id, i.id, i.product_id, least(i.qty, 1), round(i.unit_price_bs, 2), 0.03
                 FROM r JOIN LATERAL (SELECT * FROM sale_items WHERE sale_id = r.sale_id ORDER BY id LIMIT 1) i ON true",
                &[&id],
            )
            .unwrap();
            "UPDATE sales SET totals = CASE WHEN jsonb_typeof(totals) = 'object' THEN totals ||
                 jsonb_build_object('total_bs', round(random()::numeric * 100, 2),
                                    'total_usd', round(random()::numeric * 3, 2)) ELSE totals END
             WHERE id = $1::text::uuid"
                .to_string()
        }
        5 => "DELETE FROM sales WHERE id = $1::text::uuid".to_string(),
        6 => format!(
            "UPDATE sales SET sold_at = sold_at - interval '{} hours' WHERE id = $1::text::uuid",
            rng.below(24 * 20)
        ),
        7 => format!(
            "UPDATE sales SET customer_id = {} WHERE id = $1::text::uuid AND store_id = '{}'",
            customer(rng, 0),
            STORES[0].0
        ),
        _ => format!("UPDATE sales SET store_id = '{other_store}', customer_id = NULL WHERE id = $1::text::uuid"),
    };
    db.execute(sql.as_str(), &[&id])?;
    Ok(())
}

/// Stock work of a store: a delivery, a sale's movement, a correction, a deleted or edited
/// movement (its quantity, warehouse or escrow flag), or a product that changes what the
/// inventory metrics count.
pub fn change_stock(db: &mut postgres::Transaction, rng: &mut Rng, products: &[(String, String)]) {
    let (product, store) = rng.pick(products).clone();
    if rng.chance(50) {
        change_warehouse_stock(db, rng, &product, &store);
        return;
    }
    match rng.below(6) {
        0..=2 => {
            let qty = format!("{}{}.{}", if rng.chance(60) { "-" } else { "" }, rng.below(40), rng.below(1000));
            db.execute(
                "INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta)
                 VALUES (gen_random_uuid(), $1::text::uuid, $2::text::uuid, 'adjust', $3::text::numeric)",
                &[&store, &product, &qty],
            )
            .unwrap();
        }
        3 => {
            db.execute(
                "DELETE FROM inventory_movements WHERE id = (SELECT id FROM inventory_movements
                 WHERE product_id = $1::text::uuid ORDER BY id LIMIT 1)",
                &[&product],
            )
            .unwrap();
        }
        4 if rng.chance(50) => {
            db.execute(
                "UPDATE inventory_movements SET qty_delta = qty_delta + 1.5 WHERE id = (SELECT id FROM inventory_movements
                 WHERE product_id = $1::text::uuid ORDER BY id DESC LIMIT 1)",
                &[&product],
            )
            .unwrap();
        }
        4 => {
            // a movement re-assigned (LA-CAJA's reconciliation backfills a warehouse into
            // movements without one), or marked as escrow: it moves between the ledger's keys
            db.execute(
                "UPDATE inventory_movements m SET warehouse_id = CASE WHEN m.warehouse_id IS NULL
                        THEN (SELECT w.id FROM warehouses w WHERE w.store_id = m.store_id ORDER BY random() LIMIT 1) END,
                        from_escrow = NOT coalesce(m.from_escrow, false)
                 WHERE m.id = (SELECT id FROM inventory_movements WHERE product_id = $1::text::uuid ORDER BY random() LIMIT 1)",
                &[&product],
            )
            .unwrap();
        }
        _ => {
            db.execute(
                "UPDATE products SET is_active = random() < 0.8, low_stock_threshold = (random() * 10)::int,
                        cost_bs = round((random() * 100)::numeric, 2) WHERE id = $1::text::uuid",
                &[&product],
            )
            .unwrap();
        }
    }
}

/// Stock as LA-CAJA's services write it (SPEC §7): a clamped change of one warehouse's row (base
/// or a variant) with its movement, a transfer's reservation (no movement), an escrow sale (a
/// movement without a stock write), a void whose warehouse is unknown (a movement without a
/// warehouse), a lot received or consumed, a BCV rate set or retired, a product made a weight
/// product.
pub fn change_warehouse_stock(db: &mut postgres::Transaction, rng: &mut Rng, product: &str, store: &str) {
    let warehouse: String = db
        .query_one(
            "SELECT id::text FROM warehouses WHERE store_id = $1::text::uuid ORDER BY random() LIMIT 1",
            &[&store],
        )
        .unwrap()
        .get(0);
    let qty = format!("{}{}.{}", if rng.chance(50) { "-" } else { "" }, rng.below(20), rng.below(1000));
    match rng.below(10) {
        0..=3 => {
            // updateStock: GREATEST(0, stock + delta), base row or a variant, and the movement
            let variant = if rng.chance(30) { format!("'f0000000-0000-4000-8000-00000000000{}'::uuid", rng.below(3)) } else { "NULL".into() };
            let conflict = if variant == "NULL" { "(warehouse_id, product_id) WHERE variant_id IS NULL" } else { "(warehouse_id, product_id, variant_id)" };
            db.execute(
                &format!(
                    "INSERT INTO warehouse_stock (warehouse_id, product_id, variant_id, stock)
                     VALUES ($1::text::uuid, $2::text::uuid, {variant}, greatest(0, $3::text::numeric))
                     ON CONFLICT {conflict} DO UPDATE SET stock = greatest(0, warehouse_stock.stock + $3::text::numeric), updated_at = now()"
                ),
                &[&warehouse, &product, &qty],
            )
            .unwrap();
            db.execute(
                &format!(
                    "INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, warehouse_id, variant_id)
                     VALUES (gen_random_uuid(), $1::text::uuid, $2::text::uuid, 'adjust', $3::text::numeric, $4::text::uuid, {variant})"
                ),
                &[&store, &product, &qty, &warehouse],
            )
            .unwrap();
        }
        4 if rng.chance(60) => {
            // a transfer created: stock moves to reserved, no movement until it is received
            db.execute(
                "UPDATE warehouse_stock SET stock = stock - 1, reserved = reserved + 1
                 WHERE warehouse_id = $1::text::uuid AND product_id = $2::text::uuid AND variant_id IS NULL AND stock >= 1",
                &[&warehouse, &product],
            )
            .unwrap();
        }
        4 => {
            // a transfer received into another warehouse of the store: the reservation leaves
            // the origin, the destination gains it (clamped upsert), and the two movements
            let received = db
                .execute(
                    "UPDATE warehouse_stock SET reserved = reserved - 1
                     WHERE warehouse_id = $1::text::uuid AND product_id = $2::text::uuid AND variant_id IS NULL AND reserved >= 1",
                    &[&warehouse, &product],
                )
                .unwrap();
            if received == 1 {
                db.execute(
                    "WITH destination AS (
                         SELECT id FROM warehouses WHERE store_id = $3::text::uuid AND id <> $1::text::uuid ORDER BY random() LIMIT 1),
                     stocked AS (
                         INSERT INTO warehouse_stock (warehouse_id, product_id, stock)
                         SELECT id, $2::text::uuid, 1 FROM destination
                         ON CONFLICT (warehouse_id, product_id) WHERE variant_id IS NULL
                         DO UPDATE SET stock = greatest(0, warehouse_stock.stock + 1), updated_at = now())
                     INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, warehouse_id)
                     SELECT gen_random_uuid(), $3::text::uuid, $2::text::uuid, m.kind, m.qty, m.warehouse_id
                     FROM destination d
                     CROSS JOIN LATERAL (VALUES ('transfer_out', -1, $1::text::uuid), ('transfer_in', 1, d.id))
                          AS m (kind, qty, warehouse_id)",
                    &[&warehouse, &product, &store],
                )
                .unwrap();
            }
        }
        5 => {
            // an escrow sale (movement, no stock write) or a void whose warehouse is unknown
            let (kind, wh, escrow) = if rng.chance(50) { ("sold", Some(warehouse.as_str()), true) } else { ("adjust", None, false) };
            db.execute(
                "INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, warehouse_id, from_escrow)
                 VALUES (gen_random_uuid(), $1::text::uuid, $2::text::uuid, $3, -1, $4::text::uuid, $5)",
                &[&store, &product, &kind, &wh, &escrow],
            )
            .unwrap();
        }
        6 => {
            if rng.chance(60) {
                db.execute(
                    "INSERT INTO product_lots (product_id, lot_number, initial_quantity, remaining_quantity, unit_cost_bs, unit_cost_usd)
                     VALUES ($1::text::uuid, gen_random_uuid()::text, 10, $2::text::numeric, round((random() * 80)::numeric, 2),
                             round((random() * 2)::numeric, 2))",
                    &[&product, &format!("{}.{}", rng.below(12), rng.below(1000))],
                )
                .unwrap();
            } else {
                db.execute(
                    "UPDATE product_lots SET remaining_quantity = greatest(0, remaining_quantity - 2.5)
                     WHERE id = (SELECT id FROM product_lots WHERE product_id = $1::text::uuid ORDER BY received_at LIMIT 1)",
                    &[&product],
                )
                .unwrap();
            }
        }
        7 => {
            if rng.chance(70) {
                db.execute(
                    "INSERT INTO exchange_rates (store_id, rate, rate_type, is_active, is_preferred, effective_from, effective_until)
                     VALUES ($1::text::uuid, round((30 + random() * 20)::numeric, 6), (ARRAY['BCV', 'BCV', 'PARALLEL'])[1 + (random() * 2)::int],
                             random() < 0.9, false, now() - (random() * 3) * interval '1 day',
                             CASE WHEN random() < 0.2 THEN now() - interval '1 hour' END)",
                    &[&store],
                )
                .unwrap();
            } else {
                db.execute(
                    "UPDATE exchange_rates SET is_active = NOT is_active, updated_at = now()
                     WHERE id = (SELECT id FROM exchange_rates WHERE store_id = $1::text::uuid ORDER BY random() LIMIT 1)",
                    &[&store],
                )
                .unwrap();
            }
        }
        _ => {
            db.execute(
                "UPDATE products SET is_weight_product = random() < 0.5, weight_unit = (ARRAY['kg', 'g', 'lb', 'oz'])[1 + (random() * 3)::int],
                        cost_per_weight_bs = CASE WHEN random() < 0.5 THEN round((random() * 10)::numeric, 6) END,
                        cost_per_weight_usd = CASE WHEN random() < 0.5 THEN round((random() * 0.3)::numeric, 6) END
                 WHERE id = $1::text::uuid",
                &[&product],
            )
            .unwrap();
        }
    }
}

/// Every product of the POS stores (`STORES`) with its store, as (id, store_id). Products of
/// other stores are left to tests that create and delete them concurrently.
pub fn store_products(db: &mut Client) -> Vec<(String, String)> {
    let stores: Vec<&str> = STORES.iter().map(|(id, _)| *id).collect();
    db.query("SELECT id::text, store_id::text FROM products WHERE store_id = ANY($1::text[]::uuid[]) ORDER BY id", &[&stores])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// One POS session: `transactions` random transactions, some rolled back.
pub fn pos_session(database: &str, seed: u64, transactions: usize, shared: SharedIds) {
    let mut db = connect(database);
    let mut rng = Rng::new(seed);
    let mut own: Vec<String> = Vec::new();
    let products = store_products(&mut db);
    for _ in 0..transactions {
        let mut tx = db.transaction().unwrap();
        let roll_back = rng.chance(7);
        let mut created = Vec::new();
        match rng.below(100) {
            0..=39 => created = insert_sales(&mut tx, &mut rng, 1),
            40..=44 => change_stock(&mut tx, &mut rng, &products),
            45..=54 => {
                let n = 2 + rng.below(30) as usize;
                created = insert_sales(&mut tx, &mut rng, n);
            }
            55..=89 => {
                let picked = {
                    let ids = shared.lock().unwrap();
                    (!ids.is_empty()).then(|| ids[rng.below(ids.len() as u64) as usize].clone())
                };
                if let Some(id) = picked {
                    if let Err(e) = change_one_sale(&mut tx, &mut rng, &id) {
                        serialization_failure(e);
                        continue; // the transaction is rolled back, as a POS retrying later would see it
                    }
                }
                if rng.chance(30) {
                    created = insert_sales(&mut tx, &mut rng, 1);
                }
            }
            _ => {
                // A batch over this session's own recent sales (a sync correcting several).
                let recent: Vec<String> = own.iter().rev().take(1 + rng.below(10) as usize).cloned().collect();
                let sql = if rng.chance(50) {
                    "UPDATE sales SET voided_at = now() WHERE id = ANY($1::text[]::uuid[])"
                } else {
                    "DELETE FROM sales WHERE id = ANY($1::text[]::uuid[])"
                };
                if let Err(e) = tx.execute(sql, &[&recent]) {
                    serialization_failure(e);
                    continue;
                }
            }
        }
        // Some transactions sell more inside a savepoint that is rolled back or released
        // (a driver's autosave, a PL/pgSQL exception block): only what is released counts.
        if rng.chance(15) {
            let mut savepoint = tx.savepoint("pos_savepoint").unwrap();
            let n = 1 + rng.below(3) as usize;
            let inner = insert_sales(&mut savepoint, &mut rng, n);
            if rng.chance(30) {
                change_stock(&mut savepoint, &mut rng, &products);
            }
            if rng.chance(50) {
                savepoint.rollback().unwrap();
            } else {
                savepoint.commit().unwrap();
                created.extend(inner);
            }
        }
        if roll_back {
            tx.rollback().unwrap();
        } else {
            tx.commit().unwrap();
            own.extend(created.iter().cloned());
            shared.lock().unwrap().extend(created);
        }
    }
}

/// On a hypertable, a row another session moved to another chunk (its `sold_at` changed)
/// cannot be locked, updated or deleted: Postgres reports a serialization failure (40001), as
/// for any partitioned table, and the client retries. Anything else is a failure of the test.
fn serialization_failure(e: postgres::Error) {
    assert_eq!(e.code(), Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE), "{e}");
}

pub fn run_sessions(database: &str, seed: u64, sessions: u64, transactions: usize, shared: &SharedIds) -> Vec<thread::JoinHandle<()>> {
    (0..sessions)
        .map(|i| {
            let database = database.to_string();
            let shared = shared.clone();
            thread::spawn(move || pos_session(&database, seed.wrapping_add(i * 7919), transactions, shared))
        })
        .collect()
}

pub fn assert_exact(db: &mut Client, seed: u64, when: &str) {
    assert_exact_under(db, seed, when, "");
}

/// `assert_exact` against the oracle with some views redefined (`differences_under`).
pub fn assert_exact_under(db: &mut Client, seed: u64, when: &str, overrides: &str) {
    let found = differences_under(db, overrides);
    assert!(found.is_empty(), "{when} (LACAJA_TEST_SEED={seed}):\n{}", found.join("\n"));
}

pub fn seed_products(db: &mut Client) {
    db.batch_execute(
        "INSERT INTO products (id, store_id, name, category, price_bs, price_usd, cost_bs, cost_usd)
         SELECT gen_random_uuid(), s.id, 'product ' || i, 'cat ' || (i % 3), 36.5 * i, i, 20 * i, 0.55 * i
         FROM stores s, generate_series(1, 5) i",
    )
    .unwrap();
}

