// Building blocks shared by the generated arrays (systolic_os.v, systolic_ws.v).

// A W-bit delay line of D registers (D = 0: a wire): the operand skew of one array row or column.
module skew_line #(parameter W = 8, parameter D = 0) (
    input  wire         clk,
    input  wire [W-1:0] din,
    output wire [W-1:0] dout
);
    generate
        if (D == 0) begin : wire_through
            assign dout = din;
        end else begin : delay
            reg [W-1:0] chain [0:D-1];
            genvar d;
            always @(posedge clk) chain[0] <= din;
            for (d = 1; d < D; d = d + 1) begin : stage
                always @(posedge clk) chain[d] <= chain[d-1];
            end
            assign dout = chain[D-1];
        end
    endgenerate
endmodule

// Requantization of one ACCW-bit accumulator a (combinational):
//     y = clamp((a * mult + 2^(shift-1)) >>> shift, -2^(OW-1), 2^(OW-1) - 1)      (shift >= 1)
module requant #(parameter ACCW = 32, parameter OW = 8) (
    input  wire signed [ACCW-1:0] a,
    input  wire signed [31:0]     mult,
    input  wire [5:0]             shift,
    output wire signed [OW-1:0]   y
);
    wire signed [ACCW+32:0] one = {{(ACCW+32){1'b0}}, 1'b1};
    wire signed [ACCW+32:0] p = ($signed(a) * $signed(mult) + (one <<< (shift - 1))) >>> shift;
    wire signed [ACCW+32:0] lo = -(one <<< (OW - 1));
    wire signed [ACCW+32:0] hi = (one <<< (OW - 1)) - 1;
    assign y = (p < lo) ? lo[OW-1:0] : (p > hi) ? hi[OW-1:0] : p[OW-1:0];
endmodule
