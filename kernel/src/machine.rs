//! The machine: its devices, the event loop and the console commands.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use tandem_kernel::config::Config;
use tandem_kernel::console::{self, Command, LineEditor, PatternRange};
use tandem_kernel::pattern;
use tandem_kernel::profile::{self, Spent};
use tandem_net::smoltcp::socket::tcp;
use tandem_net::smoltcp::time::Instant;
use tandem_net::{FrameDevice, Listener, Nic, NicAddressing, NicEvent};

use crate::hw::disk::Disk;
use tandem_kernel::backend::{BlockBackend, LocalDisks};
use tandem_kernel::config::{AnaSetting, HaRole, PairNode};
use tandem_kernel::pair::{DataPair, Pair, WitnessMember};
use tandem_kernel::storage::{self, NvmeService};
use tandem_nvme::Crc32c;
use virtio_drivers::transport::DeviceType;

use crate::hw::netdev::NetQueues;
use crate::hw::pci::{self, SharedTransport};
use crate::hw::{clock, cpu, crc, memory, power, serial};
use crate::{print, println};

type NetPort = tandem_kernel::port::NetPort<NetQueues>;

/// How long DHCP NICs may take before the machine reports ready anyway.
const DHCP_READY_TIMEOUT_MICROS: u64 = 10_000_000;
const STATUS_CONNECTIONS: usize = 4;
/// How often a busy event loop reads the console without its interrupt.
const CONSOLE_POLL_MICROS: u64 = 10_000;
const STATUS_BUFFER_BYTES: usize = 4096;
/// How often smoltcp is told the neighbours ARP taught each NIC.
const NEIGHBOR_REPLAY_MICROS: u64 = 5_000_000;
/// Sectors per virtio-blk request for the pattern commands (64 KiB).
const PATTERN_CHUNK_SECTORS: u64 = 128;
/// How often a data node reads its front-end NIC's link state (a device
/// access: cheap enough at this rate even under TCG).
const LINK_CHECK_MICROS: u64 = 20_000;

pub struct Machine {
    nets: Vec<NetPort>,
    /// Each NIC's transport (for its link state), by NIC.
    net_transports: Vec<SharedTransport>,
    disks: Vec<Disk>,
    editor: LineEditor,
    ready: bool,
    started_micros: u64,
    config: Config,
    nvme: Option<NvmeService>,
    /// The NVMe service's backend on a stand-alone node.
    local_disks: LocalDisks,
    pair: Option<Pair>,
    /// Rounds of the loop that found each IRQ line raised: with the idle
    /// wake-ups, where the machine's wake-ups come from (`status`).
    irq_rounds: [u64; 16],
    loop_time: LoopTime,
    /// Time spent halted, waiting for an interrupt.
    halted_micros: u64,
    /// When the front-end NIC's link state is read next.
    next_link_check_micros: u64,
}

fn instant(micros: u64) -> Instant {
    Instant::from_micros(micros as i64)
}

fn mac_text(mac: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

impl Machine {
    /// Finds and sets up every virtio-net and virtio-blk device.
    pub fn start(config: Config) -> Self {
        let started_micros = clock::now_micros();
        let (devices, unusable) = pci::find_virtio_devices();
        for device in &unusable {
            println!("tandem: error: {device}");
        }
        let mut nets = Vec::new();
        let mut net_transports = Vec::new();
        let mut disks = Vec::new();
        for device in devices {
            cpu::unmask_irq(device.irq);
            match device.kind {
                DeviceType::Network => {
                    let index = nets.len();
                    let name: &'static str =
                        alloc::boxed::Box::leak(format!("net{index}").into_boxed_str());
                    match NetQueues::new(device.transport.clone()) {
                        Ok(queues) => {
                            let nic = FrameDevice::new(queues);
                            let mac = nic.mac_address();
                            let addressing = config.nic(index);
                            log::info!(
                                "{name}: virtio-net at {} mac {} irq {} {}",
                                device.location,
                                mac_text(mac),
                                device.irq,
                                addressing
                            );
                            let nic =
                                Nic::new(name, nic, mac, addressing, instant(clock::now_micros()));
                            let status = config.serves_status_on(index).then(|| {
                                Listener::new(
                                    config.status_port,
                                    STATUS_CONNECTIONS,
                                    STATUS_BUFFER_BYTES,
                                )
                            });
                            nets.push(NetPort::new(nic, status));
                            net_transports.push(device.transport);
                        }
                        Err(error) => println!(
                            "tandem: error: {name}: virtio-net at {} failed: {error:?}",
                            device.location
                        ),
                    }
                }
                DeviceType::Block => {
                    let index = disks.len();
                    match Disk::new(device.transport) {
                        Ok(disk) => {
                            log::info!(
                                "disk{index}: virtio-blk at {} irq {} {} MiB{}",
                                device.location,
                                device.irq,
                                disk.sectors() >> 11,
                                if disk.read_only() { " read-only" } else { "" }
                            );
                            disks.push(disk);
                        }
                        Err(error) => println!(
                            "tandem: error: disk{index}: virtio-blk at {} failed: {error:?}",
                            device.location
                        ),
                    }
                }
                _ => {}
            }
        }
        for index in config.configured_nics() {
            if index >= nets.len() {
                log::warn!(
                    "net{index} is configured but the machine has only {} NIC(s)",
                    nets.len()
                );
            }
        }
        cpu::unmask_irq(serial::COM1_IRQ);
        cpu::start_tick();
        Self {
            nets,
            net_transports,
            disks,
            editor: LineEditor::default(),
            ready: false,
            started_micros,
            config,
            nvme: None,
            local_disks: LocalDisks::new(),
            pair: None,
            irq_rounds: [0; 16],
            loop_time: LoopTime::default(),
            halted_micros: 0,
            next_link_check_micros: 0,
        }
    }

    pub fn run(mut self) -> ! {
        let mut last_console_micros = 0;
        loop {
            let now = clock::now_micros();
            // Interrupts are taken only in the idle wait: a device's line
            // needs lowering only after a wake-up (a line raised meanwhile
            // wakes the next wait at once), and the console has input only
            // after its interrupt. Each of these is a device access, which
            // under TCG costs far more than a round's other work; the console
            // is still read every tick's worth of time while the loop is busy.
            let irqs = cpu::take_pending_irqs();
            if irqs != 0 {
                for (line, rounds) in self.irq_rounds.iter_mut().enumerate() {
                    *rounds += (irqs >> line) & 1;
                }
                for port in &mut self.nets {
                    port.nic.device_mut().ack_interrupt();
                }
                for disk in &mut self.disks {
                    disk.ack_interrupt();
                }
                cpu::end_slave_interrupts(irqs);
            }
            let mut busy = false;
            if irqs & (1 << serial::COM1_IRQ) != 0
                || now.saturating_sub(last_console_micros) >= CONSOLE_POLL_MICROS
            {
                last_console_micros = now;
                busy |= self.poll_console();
            }
            let started = profile::now_nanos();
            busy |= self.poll_network(now);
            self.loop_time.network.add_since(started, 0);
            if let Some(nvme) = self.nvme.as_mut() {
                // Host I/O goes to the pair when there is one, else to the disks.
                let backend: &mut dyn BlockBackend<Disk> = match self.pair.as_mut() {
                    Some(Pair::Data(pair)) => pair,
                    _ => &mut self.local_disks,
                };
                let started = profile::now_nanos();
                busy |= nvme.poll(&mut self.nets, backend, &mut self.disks, now);
                self.loop_time.nvme.add_since(started, 0);
                if let (Some(Pair::Data(pair)), Some(disk)) =
                    (self.pair.as_mut(), self.disks.first_mut())
                {
                    if now >= self.next_link_check_micros {
                        self.next_link_check_micros = now + LINK_CHECK_MICROS;
                        let nics = pair.front_end_nics(&self.nets);
                        if !nics.is_empty() {
                            let up = nics
                                .iter()
                                .any(|&nic| self.net_transports[nic].net_link_up());
                            pair.set_front_end_link(up, &mut serial::Console, now);
                        }
                    }
                    let started = profile::now_nanos();
                    busy |= pair.poll(&mut self.nets, disk, nvme, &mut serial::Console, now);
                    self.loop_time.pair.add_since(started, 0);
                }
                // Bytes the NVMe service queued go out in this round.
                let started = profile::now_nanos();
                for port in &mut self.nets {
                    busy |= port.nic.poll(instant(now)).0;
                }
                self.loop_time.transmit.add_since(started, 0);
            }
            if let Some(Pair::Witness(witness)) = self.pair.as_mut() {
                busy |= witness.poll(&mut self.nets, &mut serial::Console, now);
            }
            self.check_ready(now);
            // Frames held back for segmentation offload go out now.
            let started = profile::now_nanos();
            for port in &mut self.nets {
                port.nic.device_mut().flush();
            }
            self.loop_time.flush.add_since(started, 0);
            if !busy && !self.nets.iter().any(|port| port.nic.device().has_rx()) {
                let halted_at = clock::now_micros();
                cpu::wait_for_interrupt();
                self.halted_micros += clock::now_micros().saturating_sub(halted_at);
            }
        }
    }

    fn poll_console(&mut self) -> bool {
        let mut busy = false;
        while let Some(byte) = serial::try_read() {
            busy = true;
            let output = self.editor.feed(byte);
            serial::write_str(output.echo);
            if let Some(line) = output.line {
                self.execute(&line);
                print!("{}", console::PROMPT);
            }
        }
        busy
    }

    fn poll_network(&mut self, now: u64) -> bool {
        let mut busy = false;
        for index in 0..self.nets.len() {
            // smoltcp forgets a neighbour after 60 s and asks again at most
            // once a second for the whole interface: a neighbour that stopped
            // answering (a node cut off) would keep every other one from
            // being asked for, hosts included, which then go unanswered.
            // Telling it what ARP taught this NIC keeps them known.
            let port = &mut self.nets[index];
            if now.saturating_sub(port.neighbors_replayed_micros) >= NEIGHBOR_REPLAY_MICROS {
                port.neighbors_replayed_micros = now;
                if let Some(own) = port.nic.address() {
                    port.nic.device_mut().replay_neighbors(own.address());
                }
            }
            let (activity, event) = self.nets[index].nic.poll(instant(now));
            busy |= activity;
            match event {
                Some(NicEvent::AddressAcquired { address, gateway }) => {
                    log::info!("net{index}: DHCP address {address} gateway {gateway:?}")
                }
                Some(NicEvent::AddressLost) => log::warn!("net{index}: DHCP lease lost"),
                None => {}
            }
            busy |= self.serve_status(index);
        }
        busy
    }

    /// The status port: every connection gets the status text, then a close.
    fn serve_status(&mut self, index: usize) -> bool {
        let port = &mut self.nets[index];
        let Some(listener) = port.status.as_mut() else {
            return false;
        };
        let sockets = port.nic.sockets_mut();
        port.status_connections.retain(|handle| {
            let closed = matches!(
                sockets.get::<tcp::Socket>(*handle).state(),
                tcp::State::Closed | tcp::State::TimeWait
            );
            if closed {
                sockets.remove(*handle);
            }
            !closed
        });
        let accepted = listener.poll(sockets, port.status_connections.len());
        if accepted.is_empty() {
            return false;
        }
        // Built only for a new connection: it reads every device's state.
        let text = self.status_text();
        let port = &mut self.nets[index];
        let sockets = port.nic.sockets_mut();
        port.status_connections.extend_from_slice(&accepted);
        for handle in accepted {
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            let bytes = text.as_bytes();
            let sent = socket
                .send_slice(&bytes[..bytes.len().min(STATUS_BUFFER_BYTES)])
                .unwrap_or(0);
            if sent < bytes.len() {
                log::debug!("status text cut at {sent} bytes");
            }
            socket.close();
        }
        false
    }

    fn check_ready(&mut self, now: u64) {
        if self.ready {
            return;
        }
        let all_addressed = self.nets.iter().all(|port| port.nic.address().is_some());
        if !all_addressed && now.saturating_sub(self.started_micros) < DHCP_READY_TIMEOUT_MICROS {
            return;
        }
        self.ready = true;
        self.start_services(now);
        let mut line = format!("tandem: ready {} ms", now / 1000);
        for port in &self.nets {
            match port.nic.address() {
                Some(address) => {
                    let _ = write!(line, " {}={address}", port.nic.name());
                }
                None => {
                    let _ = write!(line, " {}=unconfigured", port.nic.name());
                }
            }
        }
        if self.nets.is_empty() {
            line.push_str(" no-nics");
        }
        println!("{line}");
        print!("{}", console::PROMPT);
    }

    /// The pair (if configured) and the NVMe/TCP target, once the NICs have
    /// their addresses.
    fn start_services(&mut self, now: u64) {
        let (used, free) = memory::heap_usage();
        let mut nvme_settings = self.config.nvme.clone();
        let mut pair_data_bytes = None;
        match self.config.ha.role {
            HaRole::Standalone => {}
            HaRole::Witness => {
                match WitnessMember::start(
                    &self.config,
                    &mut self.nets,
                    now,
                    clock::boot_stamp(),
                    &clock::boot_entropy(),
                ) {
                    Ok(witness) => self.pair = Some(Pair::Witness(witness)),
                    Err(error) => println!("tandem: error: the witness cannot start: {error}"),
                }
                return;
            }
            HaRole::Data(node) => {
                let Some(disk) = self.disks.first_mut() else {
                    println!(
                        "tandem: error: node={} needs a disk (disk0) for the pair's data",
                        if node == PairNode::A { "a" } else { "b" }
                    );
                    return;
                };
                match DataPair::start(
                    &self.config,
                    node,
                    &mut self.nets,
                    disk,
                    now,
                    clock::boot_stamp(),
                    &clock::boot_entropy(),
                ) {
                    Ok(pair) => {
                        pair_data_bytes = Some(pair.data_bytes());
                        self.pair = Some(Pair::Data(pair));
                        // The pair decides when this node serves.
                        nvme_settings.ana_state = AnaSetting::Inaccessible;
                    }
                    Err(error) => {
                        println!("tandem: error: the pair cannot start: {error}");
                        return;
                    }
                }
            }
        }
        let crc32c = crc::has_sse42().then(|| Crc32c::with_update(crc::update));
        match NvmeService::new(
            &nvme_settings,
            &self.nets,
            &self.disks,
            used + free,
            pair_data_bytes,
            crc32c,
        ) {
            Ok(mut service) => {
                service.seed_random(&clock::boot_entropy());
                self.nvme = Some(service);
            }
            Err(error) => println!("tandem: error: the NVMe/TCP target cannot start: {error}"),
        }
    }

    fn pair_command(&mut self, command: Command) {
        let now = clock::now_micros();
        let Some(Pair::Data(pair)) = self.pair.as_mut() else {
            println!("error: this machine is not a data node of a pair (node=a|b)");
            return;
        };
        let result = match command {
            Command::Promote => pair.promote(now),
            Command::Demote => pair.demote(now),
            Command::Invalidate => pair.invalidate(now),
            Command::Verify => pair.verify(now),
            Command::Fence => {
                pair.fence(now);
                Ok(())
            }
            Command::Unfence => {
                pair.unfence(now);
                Ok(())
            }
            _ => Ok(()),
        };
        match result {
            Ok(()) => println!("ok"),
            Err(error) => println!("error: {error}"),
        }
    }

    fn execute(&mut self, line: &str) {
        match console::parse(line) {
            Err(error) => println!("error: {error}"),
            Ok(Command::Empty) => {}
            Ok(Command::Help) => println!("{}", console::HELP),
            Ok(Command::Status) => print!("{}", self.status_text()),
            Ok(Command::Nvme) => match self.nvme.as_ref() {
                Some(nvme) => print!("{}", nvme.describe(&self.nets)),
                None => println!("error: nvme: the target is not running"),
            },
            Ok(Command::NvmeAna { group, state }) => match self.nvme.as_mut() {
                Some(nvme) => match nvme
                    .target_mut()
                    .set_ana_state(group, storage::ana_state(state))
                {
                    Ok(()) => println!(
                        "nvme: ANA group {group} is now {}",
                        storage::ana_state(state).name()
                    ),
                    Err(error) => println!("error: nvme ana: {error}"),
                },
                None => println!("error: nvme: the target is not running"),
            },
            Ok(
                command @ (Command::Promote
                | Command::Demote
                | Command::Fence
                | Command::Unfence
                | Command::Invalidate
                | Command::Verify),
            ) => self.pair_command(command),
            Ok(Command::History) => match self.pair.as_ref() {
                Some(Pair::Data(pair)) => print!("{}", pair.history()),
                _ => println!("error: history: this machine is not a data node of a pair"),
            },
            Ok(Command::Log(level)) => {
                crate::logger::set_level(level);
                println!("log level {level}");
            }
            Ok(Command::DiskFill(range)) => self.disk_pattern(range, true),
            Ok(Command::DiskVerify(range)) => self.disk_pattern(range, false),
            Ok(Command::Poweroff) => {
                println!("tandem: powering off");
                power::poweroff()
            }
            Ok(Command::Reboot) => {
                println!("tandem: rebooting");
                power::reboot()
            }
        }
    }

    fn status_text(&self) -> String {
        let now = clock::now_micros();
        let (used, free) = memory::heap_usage();
        // What the machine did not spend halted: the event loop's own time,
        // the measure of its cost per I/O.
        let busy = now.saturating_sub(self.halted_micros);
        let mut text = format!(
            "uptime {}.{:03} s, busy {}.{:03} s\nmemory used={} free={} bytes\nwakeups={}",
            now / 1_000_000,
            now / 1000 % 1000,
            busy / 1_000_000,
            busy / 1000 % 1000,
            used,
            free,
            cpu::wakeups()
        );
        for (line, rounds) in self
            .irq_rounds
            .iter()
            .enumerate()
            .filter(|(_, rounds)| **rounds > 0)
        {
            let _ = write!(text, " irq{line}={rounds}");
        }
        text.push('\n');
        let _ = writeln!(text, "{}", self.loop_time);
        for (port, transport) in self.nets.iter().zip(&self.net_transports) {
            let counters = port.nic.device().counters();
            let notifications = port.nic.device().notifications();
            let address = match (port.nic.address(), port.nic.addressing()) {
                (Some(address), _) => format!("{address}"),
                (None, NicAddressing::Dhcp) => String::from("dhcp-pending"),
                (None, _) => String::from("none"),
            };
            let _ = writeln!(
                text,
                "{} mac={} ip={} gw={} link={} rx={}/{}B tx={}/{}B errors={}/{} bad-checksum={} notifies={}/{} tx-renotified={}",
                port.nic.name(),
                mac_text(port.nic.device().mac_address()),
                address,
                port.nic
                    .gateway()
                    .map(|g| format!("{g}"))
                    .unwrap_or_else(|| String::from("none")),
                if transport.net_link_up() {
                    "up"
                } else {
                    "down"
                },
                counters.rx_packets.get(),
                counters.rx_bytes.get(),
                counters.tx_packets.get(),
                counters.tx_bytes.get(),
                counters.rx_errors.get(),
                counters.tx_errors.get(),
                counters.rx_checksum_errors.get(),
                notifications.0,
                notifications.1,
                port.nic.device().transmit_renotified(),
            );
        }
        match self.pair.as_ref() {
            Some(Pair::Data(pair)) => text.push_str(&pair.status(now)),
            Some(Pair::Witness(witness)) => text.push_str(&witness.status(now)),
            None => {}
        }
        if !text.ends_with('\n') {
            text.push('\n');
        }
        for (index, disk) in self.disks.iter().enumerate() {
            let _ = writeln!(
                text,
                "disk{index} size={} bytes sectors={}{} {}",
                disk.sectors() * 512,
                disk.sectors(),
                if disk.read_only() { " read-only" } else { "" },
                disk.describe()
            );
        }
        text
    }

    fn disk_pattern(&mut self, range: PatternRange, write: bool) {
        let Some(disk) = self.disks.get_mut(range.disk) else {
            println!(
                "error: disk: no disk {} (the machine has {})",
                range.disk,
                self.disks.len()
            );
            return;
        };
        let Some(end) = range
            .lba
            .checked_add(range.count)
            .filter(|end| *end <= disk.sectors())
        else {
            println!(
                "error: disk: sectors {}..{} are beyond disk {} ({} sectors)",
                range.lba,
                range.lba.saturating_add(range.count),
                range.disk,
                disk.sectors()
            );
            return;
        };
        if write && disk.read_only() {
            println!("error: disk: disk {} is read-only", range.disk);
            return;
        }
        let mut buffer = alloc::vec![0u8; (PATTERN_CHUNK_SECTORS as usize) * pattern::SECTOR_BYTES];
        let mut lba = range.lba;
        while lba < end {
            let sectors = (end - lba).min(PATTERN_CHUNK_SECTORS);
            let bytes = &mut buffer[..sectors as usize * pattern::SECTOR_BYTES];
            if write {
                for (offset, sector) in bytes.chunks_exact_mut(pattern::SECTOR_BYTES).enumerate() {
                    pattern::fill_sector(sector, range.seed, lba + offset as u64);
                }
                if let Err(error) = disk.write_now(lba, bytes) {
                    println!(
                        "error: disk {}: write at lba {lba} failed: {error:?}",
                        range.disk
                    );
                    return;
                }
            } else {
                if let Err(error) = disk.read_now(lba, bytes) {
                    println!(
                        "error: disk {}: read at lba {lba} failed: {error:?}",
                        range.disk
                    );
                    return;
                }
                for (offset, sector) in bytes.chunks_exact(pattern::SECTOR_BYTES).enumerate() {
                    if !pattern::sector_matches(sector, range.seed, lba + offset as u64) {
                        println!(
                            "disk {}: mismatch at lba {}",
                            range.disk,
                            lba + offset as u64
                        );
                        return;
                    }
                }
            }
            lba += sectors;
        }
        if write {
            if let Err(error) = disk.flush_now() {
                println!("error: disk {}: flush failed: {error:?}", range.disk);
                return;
            }
            println!("disk {}: wrote {} sectors", range.disk, range.count);
        } else {
            println!("disk {}: verified {} sectors", range.disk, range.count);
        }
    }
}

/// The event loop's busy time by step, in µs over all rounds: the NICs'
/// receive pass, the NVMe service, the pair, the NICs' transmit pass, the
/// segmentation batches' flush.
#[derive(Default)]
struct LoopTime {
    network: Spent,
    nvme: Spent,
    pair: Spent,
    transmit: Spent,
    flush: Spent,
}

impl core::fmt::Display for LoopTime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "loop-time rounds={} network={}us nvme={}us pair={}us transmit={}us flush={}us",
            self.network.count,
            self.network.micros(),
            self.nvme.micros(),
            self.pair.micros(),
            self.transmit.micros(),
            self.flush.micros()
        )
    }
}
