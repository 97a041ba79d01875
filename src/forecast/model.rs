//! The forecasts' statistics, free of Postgres (table-driven tests at the end).
//!
//! Sales, per store and local day, in the anomaly baseline's family:
//! - the window is the last `WINDOW_DAYS` local days before the origin; holidays
//!   (`analytics.holidays`) and days without a sale (closed) are no baseline;
//! - a weekday's profile is the median of its days over the window, relative to the mean
//!   of the weekdays' medians (robust: a promotion day does not move it);
//! - the level and its trend are a Theil–Sen line through the deseasonalised days (robust
//!   too), projected to the target day;
//! - the 80 % interval comes from the store's own spread: the 10th and 90th percentiles of
//!   its days' log errors against that fit (widened for the parameters fitted and for the
//!   distance of the target from the window), never narrower than Poisson noise.
//! - A weekday on which the store has mostly been closed is forecast closed (0); a holiday is
//!   not forecast; with too little history nothing is forecast, and the status says which.
//!
//! Stock, per product: expected net demand per day (sold − returned over the last
//! `DEMAND_DAYS` usable days) shaped by the store's weekday profile, walked forward from the
//! stock now until it runs out; the interval and the reorder quantity use the product's own
//! day-to-day dispersion (never below Poisson for products sold by the unit).


/// Days of history a sales forecast reads.
pub const WINDOW_DAYS: i32 = 56;
/// Days of history a product's demand is averaged over.
pub const DEMAND_DAYS: i32 = 56;
/// Usable days (open, not a holiday) a store needs before anything is forecast.
pub const MIN_DAYS: usize = 21;
/// Open days of the target's weekday needed to forecast it.
pub const MIN_SAME_WEEKDAY: usize = 3;
/// Usable days of the demand window a stock forecast needs.
pub const MIN_DEMAND_DAYS: usize = 14;
/// How far ahead the trend of recent weeks is followed (then held flat).
pub const TREND_DAYS: i32 = 28;
/// How far ahead a stock-out is looked for.
pub const STOCK_HORIZON: i32 = 365;
/// The normal quantile of an 80 % two-sided interval.
const Z80: f64 = 1.281_551_565_544_600_4;

pub const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// A day's sales figures (or their forecast): count, revenue in bs and in usd.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    pub count: f64,
    pub bs: f64,
    pub usd: f64,
}

impl Figures {
    fn metric(&self, metric: usize) -> f64 {
        [self.count, self.bs, self.usd][metric]
    }
}

/// One local day before the origin: `offset` < 0 days from the origin's day, `weekday` 0 =
/// Sunday. Only days from the store's first sale on.
#[derive(Clone, Debug)]
pub struct HistoryDay {
    pub offset: i32,
    pub weekday: usize,
    pub figures: Figures,
    pub holiday: bool,
}

impl HistoryDay {
    /// Open and an ordinary day: part of a baseline.
    fn usable(&self) -> bool {
        !self.holiday && self.figures.count > 0.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Forecast,
    Closed,
    Holiday,
    InsufficientHistory,
    NoDemand,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Forecast => "forecast",
            Status::Closed => "closed",
            Status::Holiday => "holiday",
            Status::InsufficientHistory => "insufficient_history",
            Status::NoDemand => "no_demand",
        }
    }
}

/// An expected value and its 80 % interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub expected: f64,
    pub low: f64,
    pub high: f64,
}

#[derive(Clone, Debug)]
pub struct DayForecast {
    pub status: Status,
    pub note: String,
    /// count, bs, usd (None unless `status` is Forecast or Closed)
    pub figures: Option<[Interval; 3]>,
}

impl DayForecast {
    fn refused(status: Status, note: String) -> DayForecast {
        DayForecast { status, note, figures: None }
    }
}

/// The median (the mean of the middle two when even), found by selection rather than a sort:
/// Theil–Sen takes it of every pair's slope, a thousand and more for each fit.
pub fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let (below, middle, _) = values.select_nth_unstable_by(n / 2, |a, b| a.total_cmp(b));
    let middle = *middle;
    if n % 2 == 1 {
        return middle;
    }
    let lower = below.iter().copied().max_by(|a, b| a.total_cmp(b)).unwrap_or(middle);
    (lower + middle) / 2.0
}

/// The `p` quantile of sorted-or-not `values` (linear between order statistics).
pub fn quantile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (below, above) = (position.floor() as usize, position.ceil() as usize);
    sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
}

/// Theil–Sen: the median slope over every pair of points (robust to a few outliers).
pub fn theil_sen_slope(points: &[(f64, f64)]) -> f64 {
    let mut slopes = Vec::with_capacity(points.len() * points.len() / 2);
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if b.0 != a.0 {
                slopes.push((b.1 - a.1) / (b.0 - a.0));
            }
        }
    }
    if slopes.is_empty() {
        0.0
    } else {
        median(&mut slopes)
    }
}

/// Poisson's 10th and 90th percentiles for a mean of `expected`: summed exactly up to a mean
/// of 500, by the normal approximation above (statrs' search panics on some means).
fn poisson_band(expected: f64) -> (f64, f64) {
    if !expected.is_finite() || expected <= 0.0 {
        return (0.0, 0.0);
    }
    if expected > 500.0 {
        let spread = Z80 * expected.sqrt();
        return ((expected - spread).round().max(0.0), (expected + spread).round());
    }
    let (mut low, mut k, mut pmf) = (None, 0.0f64, (-expected).exp());
    let mut cdf = pmf;
    loop {
        if low.is_none() && cdf >= 0.10 {
            low = Some(k);
        }
        if cdf >= 0.90 {
            return (low.unwrap_or(k), k);
        }
        k += 1.0;
        pmf *= expected / k;
        cdf += pmf;
    }
}

/// What the store's history says about its week: which weekdays it opens, and how busy each
/// is relative to the others (by sales count).
#[derive(Clone, Debug)]
pub struct WeekProfile {
    /// relative activity of each weekday (mean 1 over open weekdays; 0 when closed)
    pub factor: [f64; 7],
    pub closed: [bool; 7],
    /// open days of each weekday in the window
    pub open_days: [usize; 7],
    pub usable_days: usize,
}

impl WeekProfile {
    pub fn of(history: &[HistoryDay]) -> WeekProfile {
        let mut zero = [0usize; 7];
        let mut open = [0usize; 7];
        let mut counts: [Vec<f64>; 7] = Default::default();
        for day in history.iter().filter(|d| !d.holiday) {
            if day.figures.count > 0.0 {
                open[day.weekday] += 1;
                counts[day.weekday].push(day.figures.count);
            } else {
                zero[day.weekday] += 1;
            }
        }
        // closed: mostly without a sale (a single empty day, a power cut, is no schedule)
        let closed: [bool; 7] = std::array::from_fn(|w| zero[w] >= 2 && zero[w] > open[w]);
        let medians: [f64; 7] = std::array::from_fn(|w| if closed[w] || counts[w].is_empty() { 0.0 } else { median(&mut counts[w]) });
        let open_medians: Vec<f64> = (0..7).filter(|&w| medians[w] > 0.0).map(|w| medians[w]).collect();
        let mean = if open_medians.is_empty() { 0.0 } else { open_medians.iter().sum::<f64>() / open_medians.len() as f64 };
        let factor = std::array::from_fn(|w| if mean > 0.0 { medians[w] / mean } else { 0.0 });
        WeekProfile { factor, closed, open_days: open, usable_days: open.iter().sum() }
    }
}

/// The fit of one metric: weekday factors, a robust line through the deseasonalised days, and
/// the spread of the days around it.
struct MetricFit {
    factor: [f64; 7],
    level: f64,
    slope: f64,
    /// one sale's worth of the metric: log errors are taken of value + this, so that a small
    /// day's relative noise does not explode
    unit: f64,
    /// widths (log) of the 80 % interval below and above, from the days' errors
    below: f64,
    above: f64,
    /// residual spread (log) and the time points, for the interval's growth with distance
    spread: f64,
    mean_t: f64,
    sum_squares_t: f64,
    n: usize,
}

impl MetricFit {
    fn new(days: &[&HistoryDay], metric: usize, unit: f64) -> MetricFit {
        let mut by_weekday: [Vec<f64>; 7] = Default::default();
        for day in days {
            by_weekday[day.weekday].push(day.figures.metric(metric));
        }
        let medians: [f64; 7] = std::array::from_fn(|w| if by_weekday[w].is_empty() { 0.0 } else { median(&mut by_weekday[w]) });
        let mut factor = normalised(medians);
        let (mut slope, mut level, mut points) = line(days, metric, &factor);
        // With a trend, a weekday's median is its level at the middle of its own days, which
        // differ by up to six days between weekdays: the factors are measured again against the
        // line, and the line drawn again through them.
        if slope != 0.0 {
            let mut ratios: [Vec<f64>; 7] = Default::default();
            for day in days {
                let trend = level + slope * day.offset as f64;
                if trend > 0.0 {
                    ratios[day.weekday].push(day.figures.metric(metric) / trend);
                }
            }
            let medians: [f64; 7] = std::array::from_fn(|w| if ratios[w].is_empty() { 0.0 } else { median(&mut ratios[w]) });
            factor = normalised(medians);
            (slope, level, points) = line(days, metric, &factor);
        }
        let open: Vec<f64> = medians.iter().copied().filter(|m| *m > 0.0).collect();
        let errors: Vec<f64> = days
            .iter()
            .map(|d| {
                let fitted = ((level + slope * d.offset as f64) * factor[d.weekday]).max(0.0);
                ((d.figures.metric(metric) + unit) / (fitted + unit)).ln()
            })
            .collect();
        let n = days.len();
        let parameters = open.len() + 2;
        // errors measured on the days that were fitted are smaller than on new days
        let widen = if n > parameters + 1 { (n as f64 / (n - parameters) as f64).sqrt() } else { 1.5 };
        let mut deviations: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
        let spread = 1.4826 * median(&mut deviations);
        let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n.max(1) as f64;
        MetricFit {
            factor,
            level,
            slope,
            unit,
            below: (-quantile(&errors, 0.10)).max(0.0) * widen,
            above: quantile(&errors, 0.90).max(0.0) * widen,
            spread,
            mean_t,
            sum_squares_t: points.iter().map(|p| (p.0 - mean_t).powi(2)).sum(),
            n,
        }
    }

    fn at(&self, offset: i32, weekday: usize) -> Interval {
        let t = offset as f64;
        let expected = ((self.level + self.slope * t) * self.factor[weekday]).max(0.0);
        // the line itself is uncertain, more so far from the window's centre
        let line = self.spread * (1.0 / self.n as f64 + (t - self.mean_t).powi(2) / self.sum_squares_t.max(1.0)).sqrt();
        let below = (self.below.powi(2) + (Z80 * line).powi(2)).sqrt();
        let above = (self.above.powi(2) + (Z80 * line).powi(2)).sqrt();
        Interval {
            expected,
            low: ((expected + self.unit) * (-below).exp() - self.unit).max(0.0),
            high: (expected + self.unit) * above.exp() - self.unit,
        }
    }
}

/// Weekday factors from their medians: mean 1 over the weekdays that have one (the others 1,
/// never used).
fn normalised(medians: [f64; 7]) -> [f64; 7] {
    let open: Vec<f64> = medians.iter().copied().filter(|m| *m > 0.0).collect();
    let mean = if open.is_empty() { 0.0 } else { open.iter().sum::<f64>() / open.len() as f64 };
    std::array::from_fn(|w| if mean > 0.0 && medians[w] > 0.0 { medians[w] / mean } else { 1.0 })
}

/// The Theil–Sen line through the days deseasonalised by `factor`: (slope, level at the
/// origin, the points).
fn line(days: &[&HistoryDay], metric: usize, factor: &[f64; 7]) -> (f64, f64, Vec<(f64, f64)>) {
    let points: Vec<(f64, f64)> = days.iter().map(|d| (d.offset as f64, d.figures.metric(metric) / factor[d.weekday])).collect();
    let slope = theil_sen_slope(&points);
    let mut intercepts: Vec<f64> = points.iter().map(|(t, x)| x - slope * t).collect();
    (slope, median(&mut intercepts), points)
}

/// A store's sales model at an origin, fitted once for every target day.
pub struct SalesModel {
    profile: WeekProfile,
    fits: Option<[MetricFit; 3]>,
    /// mean sales of the open ordinary days of the window
    ordinary: Option<f64>,
}

impl SalesModel {
    pub fn fit(history: &[HistoryDay]) -> SalesModel {
        let profile = WeekProfile::of(history);
        let usable: Vec<&HistoryDay> = history.iter().filter(|d| d.usable() && !profile.closed[d.weekday]).collect();
        let fits = (usable.len() >= MIN_DAYS).then(|| {
            let count: f64 = usable.iter().map(|d| d.figures.count).sum();
            // one average ticket: the unit of the money metrics' errors
            let ticket = |metric: usize| (usable.iter().map(|d| d.figures.metric(metric)).sum::<f64>() / count).max(0.01);
            [MetricFit::new(&usable, 0, 1.0), MetricFit::new(&usable, 1, ticket(1)), MetricFit::new(&usable, 2, ticket(2))]
        });
        let ordinary = (!usable.is_empty()).then(|| usable.iter().map(|d| d.figures.count).sum::<f64>() / usable.len() as f64);
        SalesModel { profile, fits, ordinary }
    }

    pub fn ordinary_day_sales(&self) -> Option<f64> {
        self.ordinary
    }

    pub fn closed(&self, weekday: usize) -> bool {
        self.profile.closed[weekday]
    }

    /// How busy the store is on the day `offset` from the origin's (ahead, or back in its
    /// history) relative to an average open day at the origin: its weekday's factor times the
    /// trend of its sales count (held flat beyond `TREND_DAYS` ahead); 0 on a closed weekday.
    /// A product's demand follows it.
    pub fn activity(&self, offset: i32, weekday: usize) -> f64 {
        if self.profile.closed[weekday] {
            return 0.0;
        }
        match &self.fits {
            Some([count, ..]) if count.level > 0.0 => {
                let trend = (count.level + count.slope * offset.min(TREND_DAYS) as f64) / count.level;
                count.factor[weekday] * trend.clamp(0.25, 4.0)
            }
            _ => self.profile.factor[weekday],
        }
    }

    /// The forecast of the local day `offset` days from the origin's (0 = the origin's day).
    pub fn day(&self, offset: i32, weekday: usize, holiday: bool) -> DayForecast {
        let Some(fits) = &self.fits else {
            return DayForecast::refused(
                Status::InsufficientHistory,
                format!(
                    "{} usable days (open, not holidays) in the last {WINDOW_DAYS}; a forecast needs {MIN_DAYS}",
                    self.profile.usable_days
                ),
            );
        };
        if holiday {
            return DayForecast::refused(
                Status::Holiday,
                "a holiday (analytics.holidays): holidays are no baseline, so they are not forecast".into(),
            );
        }
        if self.profile.closed[weekday] {
            let zero = Interval { expected: 0.0, low: 0.0, high: 0.0 };
            return DayForecast {
                status: Status::Closed,
                note: format!("the store has mostly been closed on {}s", WEEKDAYS[weekday]),
                figures: Some([zero; 3]),
            };
        }
        if self.profile.open_days[weekday] < MIN_SAME_WEEKDAY {
            return DayForecast::refused(
                Status::InsufficientHistory,
                format!(
                    "{} open {}s in the last {WINDOW_DAYS} days; a forecast needs {MIN_SAME_WEEKDAY}",
                    self.profile.open_days[weekday], WEEKDAYS[weekday]
                ),
            );
        }
        let mut figures = [0, 1, 2].map(|metric| fits[metric].at(offset, weekday));
        // a count is never surer than chance allows (a small store's day), nor its money
        let count = figures[0].expected;
        if count > 0.0 {
            let (low, high) = poisson_band(count);
            for (metric, interval) in figures.iter_mut().enumerate() {
                let scale = if metric == 0 { 1.0 } else { interval.expected / count };
                interval.low = interval.low.min(low * scale);
                interval.high = interval.high.max(high * scale);
            }
        }
        DayForecast { status: Status::Forecast, note: String::new(), figures: Some(figures) }
    }
}

/// Each local hour's share of its weekday's sales, from (weekday, hour, sales) over open
/// ordinary days. Hours never seen have no share.
pub fn hour_shares(samples: &[(usize, usize, f64)]) -> [[f64; 24]; 7] {
    let mut sums = [[0.0; 24]; 7];
    for &(weekday, hour, sales) in samples {
        if weekday < 7 && hour < 24 {
            sums[weekday][hour] += sales;
        }
    }
    let mut shares = [[0.0; 24]; 7];
    for w in 0..7 {
        let total: f64 = sums[w].iter().sum();
        if total > 0.0 {
            for h in 0..24 {
                shares[w][h] = sums[w][h] / total;
            }
        }
    }
    shares
}

/// One hour's part of a day's forecast: the day's figures times the hour's share, with
/// Poisson noise of that hour's count at least.
pub fn hour_of(day: &[Interval; 3], share: f64) -> [Interval; 3] {
    let count = day[0].expected * share;
    let (poisson_low, poisson_high) = if count > 0.0 { poisson_band(count) } else { (0.0, 0.0) };
    let mut hour = [0, 1, 2].map(|metric| Interval {
        expected: day[metric].expected * share,
        low: day[metric].low * share,
        high: day[metric].high * share,
    });
    for (metric, interval) in hour.iter_mut().enumerate() {
        let scale = if metric == 0 { 1.0 } else if count > 0.0 { interval.expected / count } else { 0.0 };
        interval.low = interval.low.min(poisson_low * scale);
        interval.high = interval.high.max(poisson_high * scale);
    }
    hour
}

/// A product's stock outlook.
#[derive(Clone, Debug, PartialEq)]
pub struct StockOutlook {
    pub status: Status,
    /// expected net demand per day over the next 7 days (closed days count as 0)
    pub daily_demand: Option<f64>,
    /// stock / daily demand
    pub days_of_cover: Option<f64>,
    /// day offsets from the origin's day: expected, earliest and latest of the 80 % interval
    /// (None: not within STOCK_HORIZON days)
    pub stockout: Option<i32>,
    pub stockout_earliest: Option<i32>,
    pub stockout_latest: Option<i32>,
    pub reorder: Option<f64>,
}

/// What the stock forecast knows of a store's coming days: each day's demand factor (its
/// weekday's activity, 0 when closed) from the origin's day on, and the share of the origin's
/// day still to come.
pub struct DemandCalendar {
    pub factors: Vec<f64>,
    pub rest_of_today: f64,
}

impl DemandCalendar {
    /// The store's coming days as `model` sees them; `first_weekday`: the origin day's.
    /// `holidays`: day offsets from the origin's of the holidays of the last year (with the
    /// store's sales on them) and of those ahead. A holiday ahead is as busy as the past ones
    /// were, relative to an ordinary day of the window (as busy as usual when there was none:
    /// a stock-out is better foreseen early).
    pub fn new(model: &SalesModel, first_weekday: usize, rest_of_today: f64, holidays: &[(i32, f64)]) -> DemandCalendar {
        let past: Vec<f64> = holidays.iter().filter(|(offset, _)| *offset < 0).map(|(_, sales)| *sales).collect();
        let holiday_activity = match (past.is_empty(), model.ordinary_day_sales()) {
            (false, Some(ordinary)) if ordinary > 0.0 => past.iter().sum::<f64>() / past.len() as f64 / ordinary,
            _ => 1.0,
        };
        let factors = (0..STOCK_HORIZON)
            .map(|k| {
                let holiday = holidays.iter().any(|(offset, _)| *offset == k);
                model.activity(k, (first_weekday + k as usize) % 7) * if holiday { holiday_activity } else { 1.0 }
            })
            .collect();
        DemandCalendar { factors, rest_of_today: rest_of_today.clamp(0.0, 1.0) }
    }

    fn factor(&self, k: usize) -> f64 {
        self.factors.get(k).copied().unwrap_or(0.0) * if k == 0 { self.rest_of_today } else { 1.0 }
    }
}

/// One product: `stock` now; `demand` = its net quantity on each usable day of the demand
/// window with how busy the store was that day (days it did not sell included, as 0);
/// `low_stock_threshold`; `by_unit` (sold in whole units, not by weight).
pub fn stock_outlook(
    stock: f64,
    demand: &[(f64, f64)],
    calendar: &DemandCalendar,
    cover_days: i32,
    low_stock_threshold: f64,
    by_unit: bool,
) -> StockOutlook {
    let none = |status| StockOutlook {
        status,
        daily_demand: None,
        days_of_cover: None,
        stockout: None,
        stockout_earliest: None,
        stockout_latest: None,
        reorder: None,
    };
    if demand.len() < MIN_DEMAND_DAYS {
        return none(Status::InsufficientHistory);
    }
    // per unit of weekday activity: Σ demand / Σ factors of those days
    let activity: f64 = demand.iter().map(|(_, f)| f).sum();
    let rate = if activity > 0.0 { demand.iter().map(|(q, _)| q).sum::<f64>() / activity } else { 0.0 };
    if rate <= 0.0 {
        let mut outlook = none(Status::NoDemand);
        outlook.daily_demand = Some(0.0);
        outlook.reorder = Some(round_up((low_stock_threshold - stock).max(0.0), by_unit));
        return outlook;
    }
    // dispersion: variance per unit of expected demand (Poisson: 1)
    let residual = demand.iter().map(|(q, f)| (q - rate * f).powi(2)).sum::<f64>() / (demand.len() - 1) as f64;
    let dispersion = (residual / rate).max(if by_unit { 1.0 } else { 0.0 });
    let mut mean = 0.0;
    let mut variance = 0.0;
    let (mut expected, mut earliest, mut latest) = (None, None, None);
    let mut cover = None;
    let week: f64 = (1..=7).map(|k| calendar.factor(k)).sum::<f64>() / 7.0 * rate;
    for k in 0..STOCK_HORIZON as usize {
        let day = rate * calendar.factor(k);
        mean += day;
        variance += dispersion * day;
        let k = k as i32;
        if expected.is_none() && mean >= stock {
            expected = Some(k);
        }
        if earliest.is_none() && mean + Z80 * variance.sqrt() >= stock {
            earliest = Some(k);
        }
        if latest.is_none() && mean - Z80 * variance.sqrt() >= stock {
            latest = Some(k);
        }
        if k + 1 == cover_days {
            cover = Some(mean + Z80 * variance.sqrt());
        }
        if latest.is_some() && cover.is_some() {
            break;
        }
    }
    if stock <= 0.0 {
        (expected, earliest, latest) = (Some(0), Some(0), Some(0));
    }
    let need = cover.unwrap_or(mean + Z80 * variance.sqrt());
    StockOutlook {
        status: Status::Forecast,
        daily_demand: Some(week),
        days_of_cover: Some(if week > 0.0 { stock.max(0.0) / week } else { f64::INFINITY }).filter(|d| d.is_finite()),
        stockout: expected,
        stockout_earliest: earliest,
        stockout_latest: latest,
        reorder: Some(round_up((need + low_stock_threshold - stock).max(0.0), by_unit)),
    }
}

/// Up to a whole unit, or to grams (three decimals) for products sold by weight.
fn round_up(quantity: f64, by_unit: bool) -> f64 {
    if by_unit {
        (quantity - 1e-9).ceil().max(0.0)
    } else {
        ((quantity * 1000.0 - 1e-6).ceil() / 1000.0).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `weeks` of history before the origin (a Monday: weekday 1) with `per_weekday` sales on
    /// each weekday (Sunday first), 10 bs and 1 usd a sale, scaled by `trend(offset)`.
    fn history(weeks: i32, per_weekday: [f64; 7], trend: impl Fn(i32) -> f64) -> Vec<HistoryDay> {
        (-7 * weeks..0)
            .map(|offset| {
                let weekday = (1 + offset).rem_euclid(7) as usize;
                let count = (per_weekday[weekday] * trend(offset)).round();
                HistoryDay { offset, weekday, figures: Figures { count, bs: 10.0 * count, usd: count }, holiday: false }
            })
            .collect()
    }

    fn flat(_: i32) -> f64 {
        1.0
    }

    #[test]
    fn poisson_percentiles() {
        // (mean, 10th, 90th): Poisson tables
        for (mean, low, high) in [(0.5, 0.0, 1.0), (3.0, 1.0, 5.0), (10.0, 6.0, 14.0), (100.0, 87.0, 113.0), (0.0, 0.0, 0.0)] {
            assert_eq!(poisson_band(mean), (low, high), "{mean}");
        }
        let (low, high) = poisson_band(10_000.0);
        assert!((low - 9872.0).abs() <= 1.0 && (high - 10128.0).abs() <= 1.0, "{low} {high}");
        assert_eq!(poisson_band(f64::NAN), (0.0, 0.0));
    }

    #[test]
    fn quantiles_medians_and_slopes() {
        for (values, p, expected) in [
            (vec![1.0, 2.0, 3.0, 4.0, 5.0], 0.5, 3.0),
            (vec![5.0, 1.0, 4.0, 2.0, 3.0], 0.0, 1.0),
            (vec![1.0, 2.0, 3.0, 4.0, 5.0], 0.9, 4.6),
            (vec![2.0, 4.0], 0.5, 3.0),
        ] {
            assert!((quantile(&values, p) - expected).abs() < 1e-9, "{values:?} {p}");
        }
        let medians: [(Vec<f64>, f64); 5] = [
            (vec![3.0, 1.0, 2.0, 10.0], 2.5),
            (vec![9.0, -1.0, 4.0, 4.0, 0.0], 4.0),
            (vec![7.0, 7.0, 1.0, 1.0], 4.0),
            (vec![5.0, 1.0, 8.0, 2.0, 6.0, 3.0], 4.0),
            (vec![42.0], 42.0),
        ];
        for (mut values, expected) in medians {
            let given = values.clone();
            assert_eq!(median(&mut values), expected, "{given:?}");
        }
        assert!(median(&mut []).is_nan());
        // one wild point does not bend the line
        let mut points: Vec<(f64, f64)> = (0..20).map(|t| (t as f64, 2.0 * t as f64 + 1.0)).collect();
        points[7].1 = 500.0;
        assert!((theil_sen_slope(&points) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_steady_week_is_forecast_as_it_is_with_a_tight_interval() {
        let week = [0.0, 100.0, 110.0, 120.0, 130.0, 150.0, 200.0];
        let model = SalesModel::fit(&history(8, week, flat));
        for offset in 0..7 {
            let weekday = (1 + offset) as usize % 7;
            let day = model.day(offset, weekday, false);
            if weekday == 0 {
                assert_eq!(day.status, Status::Closed, "Sundays were never open");
                assert_eq!(day.figures.unwrap()[0].expected, 0.0);
                continue;
            }
            assert_eq!(day.status, Status::Forecast);
            let [count, bs, usd] = day.figures.unwrap();
            assert!((count.expected - week[weekday]).abs() < 1e-6, "{weekday}: {count:?}");
            assert!((bs.expected - 10.0 * week[weekday]).abs() < 1e-4 && (usd.expected - week[weekday]).abs() < 1e-6);
            // no spread of its own: Poisson's
            let (low, high) = poisson_band(week[weekday]);
            assert!(count.low <= low && count.low > 0.7 * week[weekday] && count.high >= high && count.high < 1.3 * week[weekday]);
        }
    }

    #[test]
    fn a_trend_is_followed_and_a_promotion_ignored() {
        let growing = |offset: i32| 1.0 + 0.01 * (offset + 56) as f64; // +1 % of the first day's level a day
        let mut days = history(8, [80.0, 100.0, 100.0, 100.0, 100.0, 100.0, 120.0], growing);
        days[30].figures = Figures { count: 900.0, bs: 9000.0, usd: 900.0 }; // a promotion
        let model = SalesModel::fit(&days);
        let tuesday_next = model.day(8, 2, false).figures.unwrap()[0]; // offset 8: a Tuesday
        let truth = 100.0 * growing(8);
        assert!((tuesday_next.expected - truth).abs() < 0.03 * truth, "{tuesday_next:?} against {truth}");
    }

    #[test]
    fn activity_follows_the_week_and_the_trend() {
        let growing = |offset: i32| 1.0 + 0.01 * (offset + 56) as f64;
        let week = [0.0, 100.0, 100.0, 100.0, 100.0, 100.0, 200.0];
        let model = SalesModel::fit(&history(8, week, growing));
        // weekday factors: Saturday twice a weekday, Sunday closed (mean 1 over open days)
        let (monday, saturday) = (model.activity(0, 1), model.activity(5, 6));
        assert!((saturday / model.activity(5 - 7, 6) - growing(5) / growing(-2)).abs() < 0.02, "the trend between two Saturdays");
        assert!((saturday / monday - 2.0 * growing(5) / growing(0)).abs() < 0.05, "{saturday} {monday}");
        assert_eq!(model.activity(6, 0), 0.0);
        // beyond TREND_DAYS the trend is held
        assert!((model.activity(TREND_DAYS + 7, 1) - model.activity(TREND_DAYS, 1)).abs() < 1e-9);
    }

    #[test]
    fn refusals_say_why() {
        let week = [50.0; 7];
        // three weeks less a day of history
        let short: Vec<HistoryDay> = history(3, week, flat).into_iter().skip(1).collect();
        let day = SalesModel::fit(&short).day(0, 1, false);
        assert_eq!(day.status, Status::InsufficientHistory);
        assert!(day.note.contains("20 usable days") && day.figures.is_none(), "{}", day.note);
        // holidays are no baseline either
        let mut holidays = history(3, week, flat);
        holidays[5].holiday = true;
        assert_eq!(SalesModel::fit(&holidays).day(0, 1, false).status, Status::InsufficientHistory);
        // a holiday is not forecast
        let model = SalesModel::fit(&history(8, week, flat));
        let day = model.day(3, 4, true);
        assert_eq!((day.status, day.figures.is_none()), (Status::Holiday, true));
        // a weekday closed in most weeks is closed; one empty day is not
        let mut days = history(8, week, flat);
        for d in days.iter_mut().filter(|d| d.weekday == 3).take(5) {
            d.figures = Figures::default();
        }
        for d in days.iter_mut().filter(|d| d.weekday == 5).take(1) {
            d.figures = Figures::default();
        }
        let model = SalesModel::fit(&days);
        assert_eq!(model.day(2, 3, false).status, Status::Closed);
        assert_eq!(model.day(4, 5, false).status, Status::Forecast);
        // a weekday seen open only twice (holidays the other weeks): not enough
        let mut days = history(8, week, flat);
        for d in days.iter_mut().filter(|d| d.weekday == 6 && d.offset < -14) {
            d.holiday = true;
        }
        let day = SalesModel::fit(&days).day(5, 6, false);
        assert_eq!(day.status, Status::InsufficientHistory);
        assert!(day.note.contains("2 open Saturdays"), "{}", day.note);
    }

    #[test]
    fn hours_share_the_day() {
        let shares = hour_shares(&[(1, 9, 30.0), (1, 10, 70.0), (1, 9, 0.0), (2, 12, 5.0)]);
        assert_eq!((shares[1][9], shares[1][10], shares[2][12], shares[3][0]), (0.3, 0.7, 1.0, 0.0));
        let day = [Interval { expected: 100.0, low: 80.0, high: 120.0 }, Interval { expected: 1000.0, low: 800.0, high: 1200.0 },
                   Interval { expected: 100.0, low: 80.0, high: 120.0 }];
        let hour = hour_of(&day, 0.3);
        assert!((hour[0].expected - 30.0).abs() < 1e-9 && (hour[1].expected - 300.0).abs() < 1e-9);
        // an hour is noisier than its share of the day: Poisson(30)'s band at least
        let (low, high) = poisson_band(30.0);
        assert!(hour[0].low <= low && hour[0].high >= high && hour[1].high >= 10.0 * high - 1e-9);
    }

    /// A calendar from a Monday: every day as busy, but for the closed weekdays.
    fn calendar_from_monday(closed: &[usize], rest_of_today: f64) -> DemandCalendar {
        let factors = (0..STOCK_HORIZON as usize).map(|k| if closed.contains(&((1 + k) % 7)) { 0.0 } else { 1.0 }).collect();
        DemandCalendar { factors, rest_of_today }
    }

    #[test]
    fn stock_runs_out_when_demand_has_used_it_up() {
        let calendar = calendar_from_monday(&[], 1.0);
        let steady: Vec<(f64, f64)> = (0..28).map(|_| (2.0, 1.0)).collect();
        // 2 a day, 10 in stock: gone during the fifth day (offset 4); no threshold
        let outlook = stock_outlook(10.0, &steady, &calendar, 14, 0.0, true);
        assert_eq!(outlook.status, Status::Forecast);
        assert_eq!((outlook.daily_demand, outlook.days_of_cover, outlook.stockout), (Some(2.0), Some(5.0), Some(4)));
        // Poisson spread by the unit: earlier and later bounds around it
        assert!(outlook.stockout_earliest.unwrap() < 4 && outlook.stockout_latest.unwrap() > 4, "{outlook:?}");
        // reorder: 14 days of demand with its 90th percentile, plus the threshold, less the stock
        let with_threshold = stock_outlook(10.0, &steady, &calendar, 14, 5.0, true);
        let need = 28.0 + Z80 * 28f64.sqrt();
        assert_eq!(with_threshold.reorder, Some((need + 5.0 - 10.0).ceil()));
        // weight products: to the gram, no Poisson floor (a steady 2 kg a day is steady)
        let by_weight = stock_outlook(10.0, &steady, &calendar, 14, 0.0, false);
        assert_eq!((by_weight.stockout_earliest, by_weight.stockout_latest, by_weight.reorder), (Some(4), Some(4), Some(18.0)));
        // half of today still to come, closed on Sundays (offset 6 from a Monday)
        let calendar = calendar_from_monday(&[0], 0.5);
        let outlook = stock_outlook(13.0, &steady, &calendar, 14, 0.0, false);
        // 1 + 2 × 5 = 11 by Saturday (offset 5), nothing on Sunday, 13 on Monday (offset 7)
        assert_eq!(outlook.stockout, Some(7));
    }

    #[test]
    fn a_holiday_ahead_is_as_busy_as_the_past_ones() {
        let model = SalesModel::fit(&history(8, [50.0; 7], flat));
        // none in the last year: as usual
        let usual = DemandCalendar::new(&model, 1, 1.0, &[(3, 0.0)]);
        assert!((usual.factors[3] - usual.factors[2]).abs() < 1e-9);
        // closed on the last two: closed
        let closed = DemandCalendar::new(&model, 1, 1.0, &[(-200, 0.0), (-40, 0.0), (3, 0.0)]);
        assert_eq!(closed.factors[3], 0.0);
        // half as busy
        let half = DemandCalendar::new(&model, 1, 1.0, &[(-40, 25.0), (3, 0.0)]);
        assert!((half.factors[3] - 0.5 * half.factors[2]).abs() < 1e-9, "{:?}", &half.factors[..5]);
    }

    #[test]
    fn stock_without_demand_or_history() {
        let calendar = calendar_from_monday(&[], 1.0);
        let returned_more: Vec<(f64, f64)> = (0..28).map(|d| (if d == 3 { -1.0 } else { 0.0 }, 1.0)).collect();
        let outlook = stock_outlook(3.0, &returned_more, &calendar, 14, 5.0, true);
        assert_eq!((outlook.status, outlook.stockout, outlook.reorder), (Status::NoDemand, None, Some(2.0)));
        assert_eq!(stock_outlook(3.0, &[(1.0, 1.0); 5], &calendar, 14, 0.0, true).status, Status::InsufficientHistory);
        // out of stock already
        let outlook = stock_outlook(-2.0, &[(1.0, 1.0); 28], &calendar, 7, 0.0, true);
        assert_eq!((outlook.stockout, outlook.days_of_cover), (Some(0), Some(0.0)));
    }
}
