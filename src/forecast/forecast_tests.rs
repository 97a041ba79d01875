//! In-transaction tests of the predictions (src/forecast/forecast.sql): a store with a known
//! week is forecast as that week, each refusal says why, stock runs out when its demand says,
//! and the functions serve exactly what kpis() serves to whom.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::tests::{assert_fails, lacaja_pos, outcome_helper, run, scalar, STORE_A, STORE_B};
    use pgrx::prelude::*;

    /// Sales of each weekday (Sunday first) in store A's eight weeks before today: closed on
    /// Sundays, busier at the end of the week.
    const WEEK: [i32; 7] = [0, 6, 6, 7, 7, 9, 12];

    /// Store A's last eight weeks: WEEK's sales each day at 10:00 and 16:00 local, 73 bs each
    /// (product 1: two units a sale), store B none.
    fn eight_weeks_of_store_a() {
        run(&format!(
            "INSERT INTO products (id, store_id, name, price_bs, price_usd, cost_bs, cost_usd, low_stock_threshold)
             VALUES ('f0000000-0000-4000-8000-000000000001', '{STORE_A}', 'Harina', 36.5, 1, 20, 0.5, 10),
                    ('f0000000-0000-4000-8000-000000000002', '{STORE_A}', 'Queso', 50, 1.37, 30, 0.8, 0);
             UPDATE products SET is_weight_product = true, weight_unit = 'kg' WHERE id = 'f0000000-0000-4000-8000-000000000002';
             INSERT INTO warehouses (id, store_id, name, is_default) VALUES ('e0000000-0000-4000-8000-000000000001', '{STORE_A}', 'main', true);
             INSERT INTO warehouse_stock (warehouse_id, product_id, stock)
             VALUES ('e0000000-0000-4000-8000-000000000001', 'f0000000-0000-4000-8000-000000000001', 100),
                    ('e0000000-0000-4000-8000-000000000001', 'f0000000-0000-4000-8000-000000000002', 3.5);
             CREATE TEMP TABLE week (weekday int, sales int);
             INSERT INTO week SELECT w - 1, n FROM unnest(ARRAY{WEEK:?}) WITH ORDINALITY AS u (n, w);
             CREATE TEMP TABLE planned AS
             SELECT gen_random_uuid() AS id, ((d::date)::timestamp + interval '10 hours' + (i % 2) * interval '6 hours')
                                             AT TIME ZONE 'America/Caracas' AS sold_at
             FROM generate_series(analytics.store_today('{STORE_A}') - 56, analytics.store_today('{STORE_A}') - 1, interval '1 day') AS d
             JOIN week ON week.weekday = extract(dow FROM d)::int
             CROSS JOIN LATERAL generate_series(1, week.sales) AS i;
             {}",
            sell_planned("planned", STORE_A, "f0000000-0000-4000-8000-000000000001", 2)
        ));
    }

    /// SQL that sells each row of the temp table `planned` (id, sold_at) in `store`: `qty` units
    /// of `product` at 36.5 bs (1 usd) each, paid in bolívares.
    fn sell_planned(planned: &str, store: &str, product: &str, qty: i32) -> String {
        let (bs, usd) = (36.5 * qty as f64, qty);
        format!(
            "INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment)
             SELECT id, '{store}', sold_at, 36.5, 'BS',
                    jsonb_build_object('subtotal_bs', {bs}, 'subtotal_usd', {usd}, 'discount_bs', 0, 'discount_usd', 0,
                                       'total_bs', {bs}, 'total_usd', {usd}),
                    '{{\"method\": \"CASH_BS\"}}'
             FROM {planned};
             INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
             SELECT gen_random_uuid(), id, '{product}', {qty}, 36.5, 1 FROM {planned};"
        )
    }

    fn week_of(day_sql: &str) -> usize {
        scalar::<i32>(&format!("SELECT extract(dow FROM {day_sql})::int")).unwrap() as usize
    }

    #[pg_test]
    fn a_known_week_is_forecast_as_it_was_and_every_refusal_says_why() {
        outcome_helper();
        lacaja_pos();
        eight_weeks_of_store_a();
        run("INSERT INTO analytics.holidays (day, name) VALUES (analytics.store_today('a0000000-0000-4000-8000-000000000001') + 2, 'Fiesta')");
        for offset in 0..7 {
            let day = format!("analytics.store_today('{STORE_A}') + {offset}");
            let row = |column: &str| -> Option<String> {
                scalar(&format!("SELECT {column}::text FROM analytics.forecast_sales('{STORE_A}') WHERE day = {day}"))
            };
            let weekday = week_of(&day);
            let status = row("status").unwrap();
            if offset == 2 {
                assert_eq!(status, "holiday");
                assert_eq!((row("expected_sales"), row("expected_bs")), (None, None));
                assert!(row("note").unwrap().contains("analytics.holidays"));
            } else if weekday == 0 {
                assert_eq!(status, "closed");
                assert_eq!((row("expected_sales").as_deref(), row("sales_high").as_deref()), (Some("0.0"), Some("0.0")));
                assert!(row("note").unwrap().contains("Sundays"));
            } else {
                assert_eq!(status, "forecast", "{day}: {:?}", row("note"));
                let expected: f64 = row("expected_sales").unwrap().parse().unwrap();
                assert!((expected - WEEK[weekday] as f64).abs() < 0.05, "weekday {weekday}: {expected}");
                let bs: f64 = row("expected_bs").unwrap().parse().unwrap();
                assert!((bs - 73.0 * WEEK[weekday] as f64).abs() < 0.5, "weekday {weekday}: {bs} bs");
                let (low, high): (f64, f64) = (row("sales_low").unwrap().parse().unwrap(), row("sales_high").unwrap().parse().unwrap());
                assert!(low < expected && expected < high && low >= 0.0, "{low} {expected} {high}");
            }
        }
        // No history: nothing forecast, and why.
        let note: String = scalar(&format!(
            "SELECT string_agg(DISTINCT status || ': ' || note, '; ') FROM analytics.forecast_sales('{STORE_B}', 3)"
        ))
        .unwrap();
        assert_eq!(note, "insufficient_history: 0 usable days (open, not holidays) in the last 56; a forecast needs 21");
        // Three weeks less a day: still not enough.
        run(&format!(
            "DELETE FROM sales WHERE store_id = '{STORE_A}' AND sold_at < (analytics.store_today('{STORE_A}') - 21)::timestamp AT TIME ZONE 'America/Caracas'"
        ));
        let statuses: String =
            scalar(&format!("SELECT string_agg(DISTINCT status, ',') FROM analytics.forecast_sales('{STORE_A}', 7)")).unwrap();
        assert_eq!(statuses, "insufficient_history");
        assert_fails(&format!("SELECT * FROM analytics.forecast_sales('{STORE_A}', 0)"), "22023");
        assert_fails(&format!("SELECT * FROM analytics.forecast_sales('{STORE_A}', 91)"), "22023");
        assert_fails("SELECT * FROM analytics.forecast_sales(NULL)", "22004");
    }

    #[pg_test]
    fn hours_share_the_day_as_the_same_weekday_did() {
        lacaja_pos();
        eight_weeks_of_store_a();
        let tomorrow = format!("analytics.store_today('{STORE_A}') + 1");
        let weekday = week_of(&tomorrow);
        let hours: Vec<(i32, String)> = Spi::connect(|client| {
            client
                .select(
                    &format!(
                        "SELECT extract(hour FROM local_hour)::int, coalesce(expected_sales::text, status)
                         FROM analytics.forecast_sales_hourly('{STORE_A}') WHERE local_hour::date = {tomorrow}
                         AND (expected_sales IS NULL OR expected_sales > 0) ORDER BY 1"
                    ),
                    None,
                    &[],
                )
                .unwrap()
                .map(|row| (row.get::<i32>(1).unwrap().unwrap(), row.get::<String>(2).unwrap().unwrap()))
                .collect()
        });
        if weekday == 0 {
            assert!(hours.is_empty(), "closed on Sundays: {hours:?}");
        } else {
            // half the sales at 10:00, half at 16:00 (the odd one at 16:00)
            let at_ten = (WEEK[weekday] as f64 / 2.0).floor();
            let expected = vec![(10, format!("{at_ten:.1}")), (16, format!("{:.1}", WEEK[weekday] as f64 - at_ten))];
            assert_eq!(hours, expected);
        }
        let rows: i64 = scalar(&format!("SELECT count(*) FROM analytics.forecast_sales_hourly('{STORE_A}')")).unwrap();
        assert_eq!(rows, 48, "every hour of today and tomorrow");
    }

    #[pg_test]
    fn stock_runs_out_as_its_demand_says_and_the_reorder_covers_the_days_asked() {
        lacaja_pos();
        eight_weeks_of_store_a();
        let harina = |column: &str| -> Option<String> {
            scalar(&format!(
                "SELECT ({column})::text FROM analytics.stock_forecast('{STORE_A}') WHERE product_id = 'f0000000-0000-4000-8000-000000000001'"
            ))
        };
        // two units a sale: 2 × 47 sales a week = 94 a week, 13.43 a day
        assert_eq!(harina("status").as_deref(), Some("forecast"));
        assert_eq!(harina("stock").as_deref(), Some("100.000"));
        let daily: f64 = harina("daily_demand").unwrap().parse().unwrap();
        let weekly = 2.0 * WEEK.iter().sum::<i32>() as f64;
        assert!((daily - weekly / 7.0).abs() < 0.01, "{daily}");
        let cover: f64 = harina("days_of_cover").unwrap().parse().unwrap();
        assert!((cover - 100.0 / (weekly / 7.0)).abs() < 0.1, "{cover}");
        // the day it runs out: walk the weeks from now (today's part still to come included)
        let days_to_stockout: i32 = scalar(&format!(
            "SELECT stockout_date - analytics.store_today('{STORE_A}') FROM analytics.stock_forecast('{STORE_A}')
             WHERE product_id = 'f0000000-0000-4000-8000-000000000001'"
        ))
        .unwrap();
        assert!((6..=9).contains(&days_to_stockout), "{days_to_stockout}");
        let (earliest, latest): (String, String) =
            (harina("stockout_earliest - stockout_date").unwrap(), harina("stockout_latest - stockout_date").unwrap());
        assert!(earliest.parse::<i32>().unwrap() <= 0 && latest.parse::<i32>().unwrap() >= 0, "{earliest} {latest}");
        // 14 days of demand (with its upper 80 % bound) and the threshold (10), less the stock
        let reorder: f64 = harina("reorder_qty").unwrap().parse().unwrap();
        assert!(reorder >= 2.0 * weekly + 10.0 - 100.0 && reorder == reorder.round(), "{reorder}");
        let longer: f64 = scalar::<pgrx::AnyNumeric>(&format!(
            "SELECT reorder_qty FROM analytics.stock_forecast('{STORE_A}', 28) WHERE product_id = 'f0000000-0000-4000-8000-000000000001'"
        ))
        .unwrap()
        .to_string()
        .parse()
        .unwrap();
        assert!(longer > reorder + weekly, "{longer} against {reorder}");
        // a product never sold: no demand, no stock-out; weight products in their unit
        let queso: String = scalar(&format!(
            "SELECT concat_ws(' ', status, unit, stock, reorder_qty, stockout_date) FROM analytics.stock_forecast('{STORE_A}')
             WHERE product_id = 'f0000000-0000-4000-8000-000000000002'"
        ))
        .unwrap();
        assert_eq!(queso, "no_demand kg 3.500 0.000");
        // returns net the demand: every harina sold in the demand window (8 weeks) returned
        run(&format!(
            "INSERT INTO sale_returns (id, store_id, sale_id, total_bs, total_usd)
             SELECT gen_random_uuid(), '{STORE_A}', s.id, 73, 2 FROM sales s
             WHERE s.sold_at >= (analytics.store_today('{STORE_A}') - 56)::timestamp AT TIME ZONE 'America/Caracas';
             INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
             SELECT gen_random_uuid(), r.id, i.id, i.product_id, i.qty, 73, 2
             FROM sale_returns r JOIN sale_items i ON i.sale_id = r.sale_id"
        ));
        assert_eq!(harina("status").as_deref(), Some("no_demand"));
        // too little history
        let rows: i64 = scalar(&format!("SELECT count(*) FROM analytics.stock_forecast('{STORE_B}')")).unwrap();
        assert_eq!(rows, 0, "store B has no products");
        run(&format!(
            "INSERT INTO products (id, store_id, name) VALUES ('f0000000-0000-4000-8000-000000000003', '{STORE_B}', 'Nuevo')"
        ));
        let note: String = scalar(&format!("SELECT concat_ws(': ', status, note) FROM analytics.stock_forecast('{STORE_B}')")).unwrap();
        assert_eq!(note, "insufficient_history: 0 usable days (open, not holidays) in the last 56; a stock forecast needs 14");
    }

    #[pg_test]
    fn every_stores_outlook_in_one_call_is_each_stores_own() {
        lacaja_pos();
        eight_weeks_of_store_a();
        // store B: another zone, its own holiday ahead, and sales on Mondays to Wednesdays only
        run(&format!(
            "SELECT analytics.set_store_timezone('{STORE_B}', 'Asia/Tokyo');
             INSERT INTO analytics.holidays (day, name, store_id) VALUES (analytics.store_today('{STORE_B}') + 3, 'Aniversario', '{STORE_B}');
             INSERT INTO products (id, store_id, name, price_bs, price_usd, cost_bs, cost_usd, low_stock_threshold)
             VALUES ('f0000000-0000-4000-8000-000000000003', '{STORE_B}', 'Nuevo', 36.5, 1, 20, 0.5, 2);
             CREATE TEMP TABLE planned_b AS
             SELECT gen_random_uuid() AS id, p.sold_at + interval '1 hour' AS sold_at FROM planned p
             WHERE extract(dow FROM p.sold_at AT TIME ZONE 'Asia/Tokyo') BETWEEN 1 AND 3;
             {}",
            sell_planned("planned_b", STORE_B, "f0000000-0000-4000-8000-000000000003", 1)
        ));
        let outlooks = |stores: &str| {
            format!("SELECT * FROM analytics_internal._stock_outlook(14, now(), analytics_internal._products_in_stock(ARRAY[{stores}]::uuid[]))")
        };
        let (a, b) = (format!("'{STORE_A}'"), format!("'{STORE_B}'"));
        let together = outlooks(&format!("{a}, {b}"));
        let apart = format!("SELECT * FROM ({} UNION ALL {}) AS apart", outlooks(&a), outlooks(&b));
        let rows: i64 = scalar(&format!("SELECT count(*) FROM ({together}) t")).unwrap();
        assert_eq!(rows, 3, "two products of store A, one of store B");
        let forecast_in_b: i64 =
            scalar(&format!("SELECT count(*) FROM ({together}) t WHERE t.store_id = {b} AND t.status = 'forecast'")).unwrap();
        assert_eq!(forecast_in_b, 1, "store B's product has its own history");
        let differences: Option<String> = scalar(&format!(
            "SELECT string_agg(d::text, E'\\n') FROM (({together} EXCEPT ALL {apart}) UNION ALL ({apart} EXCEPT ALL {together})) d"
        ));
        assert_eq!(differences, None);
        // and stock_forecast() is the one store's part of it
        let differences: Option<String> = scalar(&format!(
            "SELECT string_agg(d::text, E'\\n') FROM ((SELECT * FROM analytics.stock_forecast({b})
                                    EXCEPT ALL SELECT product_id, name, unit, stock, low_stock_threshold, daily_demand, days_of_cover,
                                                      stockout_date, stockout_earliest, stockout_latest, reorder_qty, status, note
                                               FROM ({together}) t WHERE t.store_id = {b})) d"
        ));
        assert_eq!(differences, None);
    }

    #[pg_test]
    fn stock_out_soon_is_raised_once_while_it_holds_and_today_is_forecast_into_real_time_metrics() {
        outcome_helper();
        lacaja_pos();
        eight_weeks_of_store_a();
        let refresh = |horizon: i32| -> serde_json::Value { scalar::<pgrx::JsonB>(&format!("SELECT analytics.refresh_forecast_alerts({horizon})")).unwrap().0 };
        // harina: 100 in stock, about 13 a day: out within 14 days; queso is not selling
        let first = refresh(14);
        assert_eq!((first["alerts_raised"].as_i64(), first["stock_out_soon"].as_i64(), first["metrics_written"].as_i64()),
                   (Some(1), Some(1), Some(1)), "{first}");
        let alert: String = scalar(
            "SELECT concat_ws(' | ', alert_type, severity, entity_type, entity_id, metric_name, threshold_value, message)
             FROM pos.real_time_alerts",
        )
        .unwrap();
        assert!(alert.starts_with("stock_out_soon | medium | product | f0000000-0000-4000-8000-000000000001 | days_of_cover | 14.00 | 100.000 unit in stock"),
                "{alert}");
        assert!(alert.contains("Reorder") && alert.contains("to cover 14 days"), "{alert}");
        let written: String = scalar(&format!(
            "SELECT concat_ws(' | ', m.metric_type, m.metric_name, m.metric_value = f.expected_bs, m.metadata ->> 'status')
             FROM pos.real_time_metrics m, analytics.forecast_sales('{STORE_A}', 1) f"
        ))
        .unwrap();
        assert_eq!(written, "forecast | forecast_daily_revenue_bs | t | forecast");
        // once while it holds; today's forecast once a day
        let again = refresh(14);
        assert_eq!((again["alerts_raised"].as_i64(), again["stock_out_soon"].as_i64(), again["metrics_written"].as_i64()),
                   (Some(0), Some(1), Some(0)), "{again}");
        // restocked: no longer holds; running low again: raised again
        run("UPDATE warehouse_stock SET stock = 10000 WHERE product_id = 'f0000000-0000-4000-8000-000000000001'");
        let restocked = refresh(14);
        assert_eq!((restocked["alerts_raised"].as_i64(), restocked["stock_out_soon"].as_i64()), (Some(0), Some(0)), "{restocked}");
        run("UPDATE warehouse_stock SET stock = 20 WHERE product_id = 'f0000000-0000-4000-8000-000000000001'");
        let low = refresh(14);
        assert_eq!(low["alerts_raised"].as_i64(), Some(1), "{low}");
        let severity: String = scalar("SELECT severity FROM pos.real_time_alerts ORDER BY created_at DESC, severity LIMIT 1").unwrap();
        assert!(["critical", "high"].contains(&severity.as_str()), "20 left, about 13 a day: {severity}");
        assert_eq!(scalar::<i64>("SELECT count(*) FROM pos.real_time_alerts"), Some(2));
        assert_fails("SELECT analytics.refresh_forecast_alerts(0)", "22023");
    }

    /// docs/operations.md's example, as a DBA would paste it.
    #[pg_test]
    fn the_operations_example_runs_as_written() {
        lacaja_pos();
        eight_weeks_of_store_a();
        let doc = include_str!("../../docs/operations.md");
        let section = &doc[doc.find("## Forecasts and stock-out alerts").expect("the section")..];
        let start = section.find("```sql\n").expect("its SQL") + 7;
        run(&section[start..start + section[start..].find("```").unwrap()]);
        let job: Option<i64> = scalar(
            "SELECT count(*) FROM analytics.jobs WHERE proc = 'analytics_internal.policy_forecast_alerts'::regproc
             AND config = '{\"horizon_days\": 7}'",
        );
        assert_eq!(job, Some(1));
    }

    #[pg_test]
    fn forecasts_serve_readers_of_the_rollups_and_only_their_stores() {
        outcome_helper();
        lacaja_pos();
        eight_weeks_of_store_a();
        run("CREATE ROLE forecast_nobody; CREATE ROLE forecast_reader;
             GRANT USAGE ON SCHEMA analytics TO forecast_nobody, forecast_reader;
             GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO forecast_reader");
        for call in [
            format!("SELECT * FROM analytics.forecast_sales('{STORE_A}')"),
            format!("SELECT * FROM analytics.forecast_sales_hourly('{STORE_A}')"),
            format!("SELECT * FROM analytics.stock_forecast('{STORE_A}')"),
        ] {
            run("SET LOCAL ROLE forecast_nobody");
            assert_fails(&call, "42501");
            run("SET LOCAL ROLE forecast_reader");
            assert_fails(&call, "ok");
            run("RESET ROLE");
            // the helpers behind them are the owner's
            run("SET LOCAL ROLE forecast_reader");
            assert_fails(&format!("SELECT analytics_internal._forecast_sales_json(ARRAY['{STORE_A}'::uuid], now(), 7)"), "42501");
            run("RESET ROLE");
        }
    }
}
