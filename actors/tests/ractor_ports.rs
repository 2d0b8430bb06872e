//! The patched ractor's port channel (vendor/ractor/TRANCHE-PATCH.md): the queue behind every
//! actor's message and supervision ports must keep the semantics ractor relies on.

use std::sync::Arc;

use ractor::concurrency::port_channel::{SendError, TryRecvError, port_channel};

#[tokio::test]
async fn values_arrive_in_order_and_recv_ends_when_senders_are_gone() {
    let (tx, mut rx) = port_channel();
    let tx2 = tx.clone();
    tx.send(1).unwrap();
    tx2.send(2).unwrap();
    assert_eq!(rx.recv().await, Some(1));
    assert_eq!(rx.try_recv(), Ok(2));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    drop(tx);
    assert!(!tx2.is_closed());
    let waiter = tokio::spawn(async move { rx.recv().await });
    tokio::task::yield_now().await;
    drop(tx2);
    assert_eq!(waiter.await.unwrap(), None);
}

#[tokio::test]
async fn a_pending_recv_is_woken_by_a_send() {
    let (tx, mut rx) = port_channel::<u32>();
    let waiter = tokio::spawn(async move { rx.recv().await });
    tokio::task::yield_now().await;
    tx.send(7).unwrap();
    assert_eq!(waiter.await.unwrap(), Some(7));
}

#[tokio::test]
async fn close_refuses_sends_but_keeps_what_is_queued() {
    let (tx, mut rx) = port_channel();
    tx.send("a").unwrap();
    rx.close();
    assert!(tx.is_closed());
    assert_eq!(tx.send("b"), Err(SendError("b")));
    assert_eq!(rx.try_recv(), Ok("a"));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(rx.recv().await, None);
}

#[tokio::test]
async fn a_receiver_that_always_has_values_still_yields_to_other_tasks() {
    let (tx, mut rx) = port_channel();
    let other_ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = other_ran.clone();
    tokio::spawn(async move { flag.store(true, std::sync::atomic::Ordering::SeqCst) });
    tx.send(()).unwrap();
    let mut received = 0;
    // The test runtime has one thread: the other task runs only if `recv` yields.
    while !other_ran.load(std::sync::atomic::Ordering::SeqCst) && received < 10_000 {
        rx.recv().await.unwrap();
        tx.send(()).unwrap();
        received += 1;
    }
    assert!(other_ran.load(std::sync::atomic::Ordering::SeqCst));
    assert!(received < 10_000, "yielded only after {received} values");
}

#[test]
fn dropping_the_receiver_drops_queued_values_and_refuses_sends() {
    let (tx, rx) = port_channel();
    let payload = Arc::new(());
    tx.send(payload.clone()).unwrap();
    assert_eq!(Arc::strong_count(&payload), 2);
    drop(rx);
    assert_eq!(Arc::strong_count(&payload), 1);
    assert!(tx.is_closed());
    assert!(tx.send(payload).is_err());
}
