//! The windows' arithmetic: the connection's window shared out in rounds among the streams
//! waiting for it, stalls of the connection as a whole, and SETTINGS_INITIAL_WINDOW_SIZE
//! moving every stream's window.

use super::frame::*;
use super::State;

impl State {
    /// Shares what the connection's window holds among the streams waiting for it, in turn
    /// order: each gets an equal share (at least [`MIN_SHARE`], or the whole window if it is
    /// smaller; those the window does not reach stay first in line) and is marked due. So
    /// every stream that has a window of its own progresses whenever the client grants the
    /// connection some, and none is passed over twice in a row. Called when the client grants
    /// the connection window, and after each poll of the connection's due streams (a round
    /// may leave window over: the next round shares it). With no stream waiting, the window
    /// is no longer rationed.
    pub fn start_round(&mut self) {
        if self.connection_window <= 0 {
            return;
        }
        if self.waiting.is_empty() {
            self.rationed = false;
            return;
        }
        let share = (self.connection_window / self.waiting.len() as i64)
            .max(MIN_SHARE.min(self.connection_window));
        let reached = (self.connection_window / share).max(1) as usize;
        let rest = self.waiting.split_off(reached.min(self.waiting.len()));
        for key in std::mem::replace(&mut self.waiting, rest) {
            if let Some(entry) = self.streams.get_mut(key) {
                entry.waits_connection = false;
                entry.allowance = share;
                let token = entry.token;
                self.mark(token);
            }
        }
        self.wake_if_marked();
    }

    /// Since when the connection's window has been at zero with streams waiting for it (the
    /// connection stalls as a whole: its task closes it after the stall time).
    pub fn starved_since(&self) -> Option<tokio::time::Instant> {
        self.starved_since
    }

    /// SETTINGS_INITIAL_WINDOW_SIZE changed: every open stream's window moves by the change.
    /// False (and nothing changed) when that would take a window past 2³¹−1.
    pub(super) fn initial_window_now(&mut self, value: i64) -> bool {
        let change = value - self.initial_window;
        if change == 0 {
            return true;
        }
        if change > 0
            && self
                .streams
                .iter()
                .any(|(_, e)| e.window + change > MAX_WINDOW)
        {
            return false;
        }
        self.initial_window = value;
        let mut due = Vec::new();
        for (_, entry) in self.streams.iter_mut() {
            let was = entry.window;
            entry.window += change;
            if was <= 0 && entry.window > 0 {
                due.extend(entry.token);
            }
        }
        if !due.is_empty() {
            self.ready.mark(due);
            self.woke = true;
        }
        true
    }
}
