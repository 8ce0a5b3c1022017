//! The storm (pg_test/src/storm.rs) with flex_sync: after it and one final sync per job, I1 and
//! I2 hold and Flex has no duplicate, missing or extra contact.

use flex_sync_pg_test::storm::{storm, Engine};

#[test]
fn the_storm_converges() {
    let ours = storm(Engine::FlexSync, "storm_ours", true);
    assert_eq!(ours.duplicate_rows, 0);
    assert_eq!(ours.duplicate_contacts, 0);
    assert_eq!(ours.missing_crew, 0);
    assert_eq!(ours.extra_contacts, 0);
    assert_eq!(ours.rows_not_matching_flex, 0);
}
